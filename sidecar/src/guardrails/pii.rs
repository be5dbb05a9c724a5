//! Personal data detectors: emails, phone numbers, payment cards (Luhn),
//! IBANs (mod 97), national ids (US SSN, Spanish DNI/NIE, Indian Aadhaar
//! with Verhoeff) and IP addresses. Regexes find candidates; checksums and
//! ranges decide.

use std::sync::LazyLock;

use regex::Regex;

use super::detect::{Checked, Detect, Kind, Span, always};

#[allow(clippy::unwrap_used)] // constant expressions, covered by the tests
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap()
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z]{2,24}\b"));

/// An international number (`+` and 8 to 15 digits) or a North American
/// one with separators; bare digit runs are left to the other detectors.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b)",
    )
});

static CARD: LazyLock<Regex> = LazyLock::new(|| regex(r"\b\d(?:[ -]?\d){12,18}\b"));

static IBAN: LazyLock<Regex> =
    LazyLock::new(|| regex(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"));

static SSN: LazyLock<Regex> = LazyLock::new(|| regex(r"\b\d{3}-\d{2}-\d{4}\b"));
static DNI: LazyLock<Regex> = LazyLock::new(|| regex(r"\b[XYZ0-9]\d{7}-?[A-Z]\b"));
static AADHAAR: LazyLock<Regex> = LazyLock::new(|| regex(r"\b[2-9]\d{3} ?\d{4} ?\d{4}\b"));

static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")
});
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(?:[0-9a-f]{1,4}:|:)(?::|[0-9a-f]{0,4}:){1,7}[0-9a-f]{0,4}(?:%[0-9a-z]+)?"));

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn check of payment cards.
pub fn luhn(number: &[u32]) -> bool {
    let sum: u32 = number
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn card(candidate: &str) -> bool {
    let number = digits(candidate);
    let known_issuer = matches!(
        number.as_slice(),
        [4 | 6, ..] | [3, 0 | 4..=8, ..] | [5, 1..=5, ..] | [2, 2..=7, ..]
    );
    (13..=19).contains(&number.len())
        && known_issuer
        && luhn(&number)
        && number.iter().any(|&d| d != number[0])
}

/// The ISO 13616 check: the rearranged IBAN, letters as numbers, mod 97 is 1.
pub fn iban_valid(candidate: &str) -> bool {
    let compact: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Card numbers. A candidate that fails is retried on its runs of
/// separator-delimited groups, longest first, so a number next to other
/// digits (`4111 1111 1111 1111 5`) is still found.
#[derive(Debug)]
struct Card;

impl Detect for Card {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        for m in CARD.find_iter(text) {
            let candidate = m.as_str();
            let found = if card(candidate) {
                Some((0, candidate.len()))
            } else {
                let mut groups = Vec::new();
                let mut from = 0;
                for (i, c) in candidate.char_indices() {
                    if c == ' ' || c == '-' {
                        groups.push((from, i));
                        from = i + 1;
                    }
                }
                groups.push((from, candidate.len()));
                let mut windows: Vec<(usize, usize)> = (0..groups.len())
                    .flat_map(|a| (a..groups.len()).map(move |b| (a, b)))
                    .filter(|&(a, b)| (a, b) != (0, groups.len() - 1))
                    .map(|(a, b)| (groups[a].0, groups[b].1))
                    .collect();
                windows.sort_by_key(|&(start, end)| std::cmp::Reverse(end - start));
                windows
                    .into_iter()
                    .find(|&(start, end)| card(&candidate[start..end]))
            };
            if let Some((start, end)) = found {
                out.push(Span {
                    start: m.start() + start,
                    end: m.start() + end,
                    kind: Kind::Builtin("credit_card"),
                });
            }
        }
    }
}

/// IBANs, retried without trailing groups a greedy match took from the next word.
#[derive(Debug)]
struct Iban;

impl Detect for Iban {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        for m in IBAN.find_iter(text) {
            let mut candidate = m.as_str();
            loop {
                if iban_valid(candidate) {
                    out.push(Span {
                        start: m.start(),
                        end: m.start() + candidate.len(),
                        kind: Kind::Builtin("iban"),
                    });
                    break;
                }
                match candidate.rfind(' ') {
                    Some(space) if space >= 15 => candidate = &candidate[..space],
                    _ => break,
                }
            }
        }
    }
}

fn phone(candidate: &str) -> bool {
    (8..=15).contains(&digits(candidate).len())
}

/// US Social Security numbers: never area 000, 666 or 9xx, group 00 or serial 0000.
fn ssn(candidate: &str) -> bool {
    let number = digits(candidate);
    let area = number[0] * 100 + number[1] * 10 + number[2];
    area != 0 && area != 666 && area < 900 && number[3..5] != [0, 0] && number[5..] != [0, 0, 0, 0]
}

/// Spanish DNI (8 digits) and NIE (X/Y/Z and 7 digits): the letter is the number mod 23.
fn dni(candidate: &str) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let compact: Vec<char> = candidate.chars().filter(|&c| c != '-').collect();
    let Some((&letter, body)) = compact.split_last() else {
        return false;
    };
    let mut number: u32 = 0;
    for (i, c) in body.iter().enumerate() {
        let digit = match (i, c) {
            (0, 'X') => 0,
            (0, 'Y') => 1,
            (0, 'Z') => 2,
            _ => match c.to_digit(10) {
                Some(d) => d,
                None => return false,
            },
        };
        number = number * 10 + digit;
    }
    LETTERS[(number % 23) as usize] == letter as u8
}

/// Indian Aadhaar: 12 digits with a Verhoeff check digit.
fn aadhaar(candidate: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 8, 6, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let number = digits(candidate);
    let check = number
        .iter()
        .rev()
        .enumerate()
        .fold(0u8, |c, (i, &d)| D[c as usize][P[i % 8][d as usize] as usize]);
    number.len() == 12 && check == 0
}

fn ipv4(_: &str) -> bool {
    true
}

fn ipv6(candidate: &str) -> bool {
    let address = candidate.split('%').next().unwrap_or_default();
    address.len() > 2 && address.matches(':').count() >= 2 && address.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Email detector.
pub fn email() -> Vec<Box<dyn Detect>> {
    vec![Box::new(Checked {
        kind: "email",
        regex: &EMAIL,
        valid: always,
    })]
}

/// Phone detector.
pub fn phone_numbers() -> Vec<Box<dyn Detect>> {
    vec![Box::new(Checked {
        kind: "phone",
        regex: &PHONE,
        valid: phone,
    })]
}

/// Payment card detector.
pub fn credit_card() -> Vec<Box<dyn Detect>> {
    vec![Box::new(Card)]
}

/// IBAN detector.
pub fn iban() -> Vec<Box<dyn Detect>> {
    vec![Box::new(Iban)]
}

/// National id detectors.
pub fn national_id() -> Vec<Box<dyn Detect>> {
    vec![
        Box::new(Checked {
            kind: "national_id",
            regex: &SSN,
            valid: ssn,
        }),
        Box::new(Checked {
            kind: "national_id",
            regex: &DNI,
            valid: dni,
        }),
        Box::new(Checked {
            kind: "national_id",
            regex: &AADHAAR,
            valid: aadhaar,
        }),
    ]
}

/// IP address detectors.
pub fn ip_address() -> Vec<Box<dyn Detect>> {
    vec![
        Box::new(Checked {
            kind: "ip_address",
            regex: &IPV4,
            valid: ipv4,
        }),
        Box::new(Checked {
            kind: "ip_address",
            regex: &IPV6,
            valid: ipv6,
        }),
    ]
}
