//! A small blocking HTTP client for the benchmark commands: JSON requests and server-sent-event
//! streams over plain HTTP (ureq is built without TLS to keep the binary free of C and crypto
//! dependencies; an https server needs a local plain-HTTP proxy in front of it).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// One server, addressed by its base URL; cheap to clone and share between worker threads
/// (connections are pooled inside the agent).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

/// What a streamed response delivered before it ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent `data: [DONE]`.
    Done,
    /// The connection ended without `[DONE]` (some servers do that after their last event).
    Eof,
}

impl Client {
    /// `base` is `http://host:port` (a trailing slash is dropped); `timeout` bounds each request
    /// from connect to the end of its body.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("base URL {base:?} must start with http:// (https is not built in; put a plain-HTTP proxy in front)");
        }
        // A fresh connection per request, as SGLang's client (one aiohttp session per request)
        // does: every measurement includes the same connection setup, and no idle keep-alive
        // connection pins a worker of a thread-per-connection server.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        Ok(Client { agent, base })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let mut resp =
            self.agent.get(&url).header("Connection", "close").call().with_context(|| format!("GET {url}"))?;
        let text = resp.body_mut().read_to_string().with_context(|| format!("GET {url}: reading the body"))?;
        serde_json::from_str(&text).with_context(|| format!("GET {url}: the body is not JSON"))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.url(path);
        let mut resp = self.post(&url, body)?;
        let text = resp.body_mut().read_to_string().with_context(|| format!("POST {url}: reading the body"))?;
        serde_json::from_str(&text).with_context(|| format!("POST {url}: the body is not JSON"))
    }

    /// POSTs `body` and hands the payload of every `data:` event to `on_event` as it arrives,
    /// stopping at `data: [DONE]` or the end of the connection.
    pub fn post_sse(
        &self,
        path: &str,
        body: &Value,
        mut on_event: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<StreamEnd> {
        let url = self.url(path);
        let resp = self.post(&url, body)?;
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let line = line.with_context(|| format!("POST {url}: reading the event stream"))?;
            let Some(payload) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            if payload == "[DONE]" {
                return Ok(StreamEnd::Done);
            }
            if !payload.is_empty() {
                on_event(payload)?;
            }
        }
        Ok(StreamEnd::Eof)
    }

    /// The model name the OpenAI APIs want: the first entry of `/v1/models`, else the server's
    /// `model_path` from `/get_model_info`.
    pub fn served_model(&self) -> anyhow::Result<String> {
        let listed = self.get_json("/v1/models").ok();
        if let Some(id) = listed.as_ref().and_then(|v| v.pointer("/data/0/id")?.as_str()) {
            return Ok(id.to_string());
        }
        let info = self.get_json("/get_model_info").context("neither /v1/models nor /get_model_info named a model")?;
        match info.get("model_path").and_then(Value::as_str) {
            Some(path) => Ok(path.to_string()),
            None => bail!("the server named no model; pass --model"),
        }
    }

    fn post(&self, url: &str, body: &Value) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        self.agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Connection", "close")
            .send(body.to_string())
            .with_context(|| format!("POST {url}"))
    }
}
