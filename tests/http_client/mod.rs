//! A small HTTP/1.1 client over a raw socket for the server tests: full control over what is
//! sent (malformed bodies, early disconnects), chunked bodies decoded, SSE events split out.
// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an event stream, in order, `[DONE]` included.
    pub fn events(&self) -> Vec<String> {
        let text = String::from_utf8(self.body.clone()).expect("event stream is UTF-8");
        assert!(text.ends_with("\n\n"), "event stream does not end with a blank line: {text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                assert!(!e.contains('\n'), "an event spans several lines: {e:?}");
                e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {e:?}")).to_string()
            })
            .collect()
    }

    /// The JSON events of a stream that ended with `[DONE]`.
    pub fn json_events(&self) -> Vec<Value> {
        let mut events = self.events();
        assert_eq!(events.pop().as_deref(), Some("[DONE]"), "stream does not end with [DONE]");
        events.iter().map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"))).collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
    s
}

fn send_head(s: &mut TcpStream, method: &str, path: &str, body: &[u8]) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut s = connect(addr);
    send_head(&mut s, method, path, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse(&raw)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, body.to_string().as_bytes())
}

/// Starts a streaming request and returns once the first event arrived; dropping the reader
/// closes the connection mid-stream.
pub fn open_stream(addr: SocketAddr, path: &str, body: &Value) -> (BufReader<TcpStream>, String) {
    let mut s = connect(addr);
    send_head(&mut s, "POST", path, body.to_string().as_bytes());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("read");
        if line.starts_with("data: ") {
            return (r, line);
        }
        assert!(!line.is_empty(), "stream ended before its first event");
    }
}

fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        assert_eq!(&b[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        b = &b[size + 2..];
    }
}

/// The JSON body of a 200 response (anything else fails the test, showing the body).
pub fn ok(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Concatenated `delta.content` / `delta.reasoning_content` of a chat stream, its
/// finish_reason and the usage chunk.
pub fn collect_chat_stream(events: &[Value]) -> (String, String, Option<String>, Option<Value>) {
    let (mut content, mut reasoning, mut finish, mut usage) = (String::new(), String::new(), None, None);
    for e in events {
        if let Some(u) = e.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(e["choices"], json!([]), "the usage chunk has no choices");
            usage = Some(u.clone());
        }
        for c in e["choices"].as_array().expect("choices") {
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            reasoning.push_str(c["delta"]["reasoning_content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (content, reasoning, finish, usage)
}
