//! The HTTP side: reading bodies with a size limit, plain JSON responses, and server-sent
//! events written as chunked transfer encoding, one flushed chunk per event.

use std::io::{Read, Write};

use tiny_http::{Header, Request, Response};

use super::error::ApiError;

/// Largest request body accepted (a 160k-token prompt with long tool schemas fits easily).
const MAX_BODY: u64 = 32 << 20;

pub fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(ApiError { status: 413, message: format!("the body is over {MAX_BODY} bytes"), param: None });
    }
    Ok(body)
}

/// Sends a response; a client that left is no error of ours.
pub fn respond(req: Request, status: u16, content_type: &str, body: Vec<u8>) {
    let mut resp = Response::from_data(body).with_status_code(status);
    // Content types are ASCII literals of ours; `from_bytes` only fails on non-ASCII.
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
}

pub fn respond_json(req: Request, status: u16, value: &serde_json::Value) {
    respond(req, status, "application/json", value.to_string().into_bytes());
}

pub fn respond_error(req: Request, e: &ApiError) {
    respond_json(req, e.status, &e.body());
}

/// An open event stream. Every write is flushed at once; a failed write means the client left.
pub struct EventStream {
    out: Box<dyn Write + Send>,
}

impl EventStream {
    pub fn open(req: Request) -> std::io::Result<Self> {
        let mut out = req.into_writer();
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )?;
        out.flush()?;
        Ok(EventStream { out })
    }

    /// Sends `data: {json}` and a blank line.
    pub fn send(&mut self, data: &str) -> std::io::Result<()> {
        let len = data.len() + "data: \n\n".len();
        write!(self.out, "{len:x}\r\ndata: {data}\n\n\r\n")?;
        self.out.flush()
    }

    /// Sends `data: [DONE]` and ends the body.
    pub fn done(mut self) -> std::io::Result<()> {
        self.send("[DONE]")?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}
