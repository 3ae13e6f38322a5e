//! The HTTP server: OpenAI's chat and completions APIs, SGLang's native `/generate` and model
//! info, tokenize/detokenize, health and Prometheus metrics, on tiny_http.
//!
//! Each connection's request runs on its own thread: it parses and validates, submits to the
//! engine and streams the engine's outputs back. A handler never takes the server down: errors
//! become OpenAI-shaped JSON, and a client that leaves aborts its sequences.

mod chat;
mod completions;
mod error;
mod http;
pub mod launch;
mod native;
mod output;
mod protocol;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tiny_http::{Method, Request};

pub use error::ApiError;
pub use protocol::SamplingDefaults;

use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::tokenizer::{ChatFormat, ReasoningFormat, Tokenizer};

/// Everything a request handler needs; shared by all of them.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatFormat,
    pub model_name: String,
    pub model_path: PathBuf,
    pub model_type: String,
    pub reasoning: Option<ReasoningFormat>,
    /// Whether DSML tool calls are parsed out of the output (`--tool-call-parser deepseekv32`).
    pub tool_calls: bool,
    pub defaults: SamplingDefaults,
    pub metrics: Arc<Metrics>,
}

/// A bound server; `run` serves until the process ends.
pub struct Server {
    http: Arc<tiny_http::Server>,
    state: Arc<AppState>,
}

impl Server {
    pub fn bind(addr: &str, state: AppState) -> crate::Result<Self> {
        let http =
            tiny_http::Server::http(addr).map_err(|e| crate::Error::Input(format!("cannot listen on {addr}: {e}")))?;
        Ok(Server { http: Arc::new(http), state: Arc::new(state) })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    pub fn run(&self) {
        for req in self.http.incoming_requests() {
            let state = Arc::clone(&self.state);
            let spawned = std::thread::Builder::new().name("flashseek-http".into()).spawn(move || handle(&state, req));
            if let Err(e) = spawned {
                eprintln!("flashseek: cannot start a request thread: {e}");
            }
        }
    }
}

fn handle(state: &AppState, mut req: Request) {
    Metrics::add(&state.metrics.requests, 1);
    let method = req.method().clone();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let result = match (&method, path.as_str()) {
        (Method::Get, "/health" | "/health_generate") if state.engine.is_alive() => {
            http::respond(req, 200, "text/plain", Vec::new());
            return;
        }
        (Method::Get, "/health" | "/health_generate") => Err(ApiError::unavailable("the engine has stopped")),
        (Method::Get, "/metrics") => {
            http::respond(req, 200, "text/plain; version=0.0.4", state.metrics.render().into_bytes());
            return;
        }
        (Method::Get, "/v1/models") => Ok(models(state)),
        (Method::Get, "/get_model_info") => Ok(native::model_info(state)),
        (Method::Get, "/get_server_info") => Ok(native::server_info(state)),
        (Method::Post, "/v1/chat/completions") => return body_then(state, req, chat::handle),
        (Method::Post, "/v1/completions") => return body_then(state, req, completions::handle),
        (Method::Post, "/generate") => return body_then(state, req, native::generate),
        (Method::Post, "/v1/tokenize" | "/tokenize") => {
            http::read_body(&mut req).and_then(|b| native::tokenize(state, &b))
        }
        (Method::Post, "/v1/detokenize" | "/detokenize") => {
            http::read_body(&mut req).and_then(|b| native::detokenize(state, &b))
        }
        (_, p) if KNOWN.contains(&p) => {
            Err(ApiError { status: 405, message: format!("{method} is not allowed on {p}"), param: None })
        }
        (_, p) => Err(ApiError::not_found(format!("no route for {method} {p}"))),
    };
    match result {
        Ok(v) => http::respond_json(req, 200, &v),
        Err(e) => fail(state, req, &e),
    }
}

const KNOWN: [&str; 13] = [
    "/health",
    "/health_generate",
    "/metrics",
    "/v1/models",
    "/get_model_info",
    "/get_server_info",
    "/v1/chat/completions",
    "/v1/completions",
    "/generate",
    "/v1/tokenize",
    "/tokenize",
    "/v1/detokenize",
    "/detokenize",
];

/// How a request accepted by the engine gets its answer (whole or streamed).
type Reply<'a> = Box<dyn FnOnce(Request) + 'a>;

/// Reads the body and hands it to a handler; what it accepts it answers itself.
fn body_then(state: &AppState, mut req: Request, f: for<'a> fn(&'a AppState, &[u8]) -> Result<Reply<'a>, ApiError>) {
    let accepted = http::read_body(&mut req).and_then(|body| f(state, &body));
    match accepted {
        Ok(reply) => reply(req),
        Err(e) => fail(state, req, &e),
    }
}

fn fail(state: &AppState, req: Request, e: &ApiError) {
    Metrics::add(&state.metrics.request_failures, 1);
    http::respond_error(req, e);
}

fn models(state: &AppState) -> serde_json::Value {
    json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": now_secs(),
            "owned_by": "flashseek",
            "root": state.model_name,
            "max_model_len": state.engine.info().context_length,
        }],
    })
}

/// Requests naming another model get a 404, as OpenAI answers.
fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.model_name && Some(m) != state.model_path.to_str() => Err(ApiError::not_found(format!(
            "the model `{m}` does not exist; this server serves `{}`",
            state.model_name
        ))
        .with_param("model")),
        _ => Ok(()),
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh id for a response object, e.g. `chatcmpl-3f9a…`.
pub(crate) fn new_id(prefix: &str) -> String {
    use rand::RngExt;
    format!("{prefix}-{:032x}", rand::rng().random::<u128>())
}
