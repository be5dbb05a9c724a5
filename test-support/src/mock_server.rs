//! A loopback HTTP server for mock providers: records every call, and plays
//! a script of faults before answering normally.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::TcpListener;

/// Something that goes wrong (or right) on the next call. In JSON (for the
/// `mock-upstream` control endpoint): `"hang"`, `{"status": 500}`, `{"rate-limit": 2}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    /// Answer normally.
    Normal,
    /// An HTTP error in the provider's error format.
    Status(u16),
    /// 429 with `Retry-After` seconds.
    RateLimit(u32),
    /// Answer after this many milliseconds.
    DelayMs(u64),
    /// Never answer.
    Hang,
    /// Answer 200, then drop the connection before any of the body: the
    /// sidecar sees a broken answer.
    Reset,
    /// Stream this many content pieces, then cut the connection.
    CutStream(usize),
    /// The provider's "prompt too long" error.
    ContextWindowExceeded,
    /// The provider's content-filter refusal.
    ContentFilter,
    /// Answer 200 and stream chunks without end (one every 5 ms) until the
    /// client goes away; a complete answer's JSON never closes.
    Endless,
    /// Answer 200 with the headers, then send nothing, ever.
    HeadersThenSilence,
    /// Stream an event whose text is not UTF-8 after the first chunk.
    InvalidUtf8,
    /// A complete answer of this many bytes (padding in the text).
    OversizedBodyBytes(usize),
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Call {
    /// Request path and query.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
}

impl Call {
    /// The body as JSON (panics in tests if it is not).
    #[allow(clippy::unwrap_used)]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Calls and script, shared between the server and the test.
#[derive(Debug, Default)]
pub struct State {
    calls: Mutex<Vec<Call>>,
    script: Mutex<VecDeque<Behavior>>,
    released: Mutex<Vec<Instant>>,
}

impl State {
    /// Records a call and returns what to do with it.
    pub fn record(&self, path: String, headers: HeaderMap, body: Bytes) -> Behavior {
        self.calls.lock().push(Call { path, headers, body });
        self.script.lock().pop_front().unwrap_or(Behavior::Normal)
    }

    /// Queues behaviors for the next calls.
    pub fn push(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.script.lock().extend(behaviors);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// When each unfinished answer body (`Endless`, `HeadersThenSilence`)
    /// was dropped: the moment the client's connection was seen to go.
    pub fn released(&self) -> Vec<Instant> {
        self.released.lock().clone()
    }
}

/// Notes the moment an answer body is dropped.
#[derive(Debug)]
struct NoteRelease(Arc<State>);

impl Drop for NoteRelease {
    fn drop(&mut self) {
        self.0.released.lock().push(Instant::now());
    }
}

/// A body that repeats `piece` every 5 ms for ever, noting in `state` when
/// the client stops reading it.
pub fn endless_body(state: Arc<State>, head: Bytes, piece: Bytes) -> axum::body::Body {
    let stream = async_stream::stream! {
        let _note = NoteRelease(state);
        yield Ok::<Bytes, std::io::Error>(head);
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            yield Ok(piece.clone());
        }
    };
    axum::body::Body::from_stream(stream)
}

/// A body that never sends a byte, noting in `state` when the client gives up.
pub fn silent_body(state: Arc<State>) -> axum::body::Body {
    let stream = async_stream::stream! {
        let _note = NoteRelease(state);
        futures::future::pending::<()>().await;
        yield Ok::<Bytes, std::io::Error>(Bytes::new());
    };
    axum::body::Body::from_stream(stream)
}

/// A running mock.
#[derive(Debug)]
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its calls and script.
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Serves `router` (built around `state`) on a free loopback port.
    ///
    /// # Panics
    /// No loopback port is free.
    #[allow(clippy::unwrap_used)]
    pub async fn start(state: Arc<State>, router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues behaviors for the next calls.
    pub fn push(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state.push(behaviors);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer body that streams `pieces` and then breaks the connection,
/// the way a provider's stream dies when its backend falls over. The pause
/// before the break lets the pieces reach the client first, as they would
/// from a real upstream.
pub fn broken_body(pieces: Vec<Bytes>) -> axum::body::Body {
    let stream = async_stream::stream! {
        for piece in pieces {
            yield Ok(piece);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        yield Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock cut the stream"));
    };
    axum::body::Body::from_stream(stream)
}

/// A body that sends `pieces` one by one with a pause between them, so the
/// client sees them arrive separately.
pub fn paced_body(pieces: Vec<Bytes>, pause: Duration) -> axum::body::Body {
    let stream = async_stream::stream! {
        for (i, piece) in pieces.into_iter().enumerate() {
            if i > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            yield Ok::<Bytes, std::io::Error>(piece);
        }
    };
    axum::body::Body::from_stream(stream)
}

/// One server-sent event.
pub fn sse(event: Option<&str>, data: &str) -> Bytes {
    match event {
        Some(event) => Bytes::from(format!("event: {event}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// Applies the behaviors every mock handles the same way: delays and hangs.
/// Returns the behavior left for the provider-specific answer.
pub async fn pace(behavior: Behavior) -> Behavior {
    match behavior {
        Behavior::DelayMs(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Behavior::Normal
        }
        Behavior::Hang => futures::future::pending().await,
        other => other,
    }
}

/// The words of a reply, each but the first with its leading space, so
/// streamed pieces concatenate back to the text.
pub fn pieces(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") })
        .collect()
}

/// The text of the last user message of an OpenAI-, Anthropic- or
/// Gemini-shaped request, for deterministic echo replies.
pub fn last_user_text(body: &serde_json::Value) -> String {
    let text_of = |content: &serde_json::Value| -> String {
        match content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    };
    for list in ["messages", "contents"] {
        if let Some(messages) = body.get(list).and_then(|m| m.as_array()) {
            for message in messages.iter().rev() {
                if message.get("role").and_then(|r| r.as_str()) == Some("user") {
                    let content = message.get("content").or_else(|| message.get("parts"));
                    return content.map(text_of).unwrap_or_default();
                }
            }
        }
    }
    String::new()
}
