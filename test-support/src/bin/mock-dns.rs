//! `mock-dns`: a DNS server over UDP with a fixed set of A records, for the
//! container image test (a provider's host name resolved through
//! `/etc/resolv.conf` inside the image, as in a cluster). Every other name is
//! NXDOMAIN; a known name asked for another type is an empty answer. Prints
//! one `query TYPE NAME` line per question it answers.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::UdpSocket;

#[derive(Debug, Parser)]
struct Cli {
    /// Address to listen on (glibc's resolver asks port 53 only).
    #[arg(long, default_value = "127.0.0.1:53")]
    listen: String,
    /// `NAME=IPV4`, repeatable: the names this server knows.
    #[arg(long = "record", value_parser = parse_record)]
    records: Vec<(String, Ipv4Addr)>,
}

fn parse_record(value: &str) -> Result<(String, Ipv4Addr), String> {
    let (name, address) = value.split_once('=').ok_or("expected NAME=IPV4")?;
    let address = address.parse().map_err(|e| format!("{address}: {e}"))?;
    Ok((name.trim_end_matches('.').to_ascii_lowercase(), address))
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMAT_ERROR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const HEADER_LEN: usize = 12;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let records: HashMap<String, Ipv4Addr> = cli.records.into_iter().collect();
    let socket = UdpSocket::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    println!("mock-dns listening on {}", socket.local_addr()?);
    let mut buffer = [0u8; 512];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer).await?;
        if let Some(reply) = answer(&buffer[..len], &records) {
            socket.send_to(&reply, peer).await?;
        }
    }
}

/// The reply to one query message; `None` for something that is not a query.
fn answer(query: &[u8], records: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let header = query.get(..HEADER_LEN)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let Some((name, question_end)) = question(query) else {
        return Some(reply(header, &[], RCODE_FORMAT_ERROR, &[]));
    };
    let qtype = u16::from_be_bytes([query[question_end - 4], query[question_end - 3]]);
    let qclass = u16::from_be_bytes([query[question_end - 2], query[question_end - 1]]);
    println!("query {qtype} {name}");
    let question = &query[HEADER_LEN..question_end];
    Some(match records.get(&name) {
        None => reply(header, question, RCODE_NXDOMAIN, &[]),
        Some(address) if qtype == TYPE_A && qclass == CLASS_IN => {
            let mut record = vec![0xc0, 0x0c]; // the name: a pointer to the question's
            record.extend(TYPE_A.to_be_bytes());
            record.extend(CLASS_IN.to_be_bytes());
            record.extend(30u32.to_be_bytes()); // TTL, seconds
            record.extend(4u16.to_be_bytes());
            record.extend(address.octets());
            reply(header, question, 0, &record)
        }
        Some(_) => reply(header, question, 0, &[]),
    })
}

/// The first question's name (lower case, no trailing dot) and where the
/// question (name, type, class) ends.
fn question(query: &[u8]) -> Option<(String, usize)> {
    let count = u16::from_be_bytes([query[4], query[5]]);
    if count == 0 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Compression pointers (0xc0) never occur in a question's first name.
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let end = at + 4;
    (end <= query.len()).then(|| (labels.join("."), end))
}

fn reply(header: &[u8], question: &[u8], rcode: u8, answer: &[u8]) -> Vec<u8> {
    let recursion_desired = header[2] & 0x01;
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + answer.len());
    out.extend(&header[..2]);
    // A response, authoritative, recursion available.
    out.push(0x80 | 0x04 | recursion_desired);
    out.push(0x80 | rcode);
    out.extend(u16::from(!question.is_empty()).to_be_bytes());
    out.extend(u16::from(!answer.is_empty()).to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(question);
    out.extend(answer);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut message = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            message.push(u8::try_from(label.len()).expect("short label"));
            message.extend(label.as_bytes());
        }
        message.push(0);
        message.extend(qtype.to_be_bytes());
        message.extend(CLASS_IN.to_be_bytes());
        message
    }

    fn records() -> HashMap<String, Ipv4Addr> {
        HashMap::from([("api.llmesh.test".to_owned(), Ipv4Addr::new(127, 0, 0, 1))])
    }

    #[test]
    fn a_known_name_gets_its_address() {
        let reply = answer(&query("API.llmesh.test", TYPE_A), &records()).expect("reply");
        assert_eq!(&reply[..2], &[0x12, 0x34], "the query's id");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[127, 0, 0, 1]);
    }

    #[test]
    fn other_names_do_not_exist_and_other_types_are_empty() {
        let unknown = answer(&query("api.llmesh.test.svc.cluster.local", TYPE_A), &records()).expect("reply");
        assert_eq!(unknown[3] & 0x0f, RCODE_NXDOMAIN);
        let aaaa = answer(&query("api.llmesh.test", 28), &records()).expect("reply");
        assert_eq!(aaaa[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 0, "no answer");
        assert_eq!(answer(&[0; 5], &records()), None, "too short to answer");
    }
}
