//! The HTTP server end to end over loopback, on the tiny V3.2 fixture with its tokenizer:
//! OpenAI chat and completions (streaming and not), SGLang's native API, sampling controls,
//! every error case, a client leaving mid-stream, and 200 concurrent streams.

mod http_client;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use flashseek::server::launch::{self, ServeArgs};
use http_client::{collect_chat_stream, get, ok, open_stream, post, request};
use serde_json::{json, Value};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v32");
const CONTEXT: usize = 2048;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn start(extra: &[&str]) -> SocketAddr {
    let mut argv = vec!["serve", "--model-path", MODEL, "--port", "0", "--served-model-name", "tiny"];
    argv.extend_from_slice(extra);
    let args = Cli::parse_from(argv).serve;
    let server = launch::start(&args).expect("server starts");
    let addr = server.local_addr().expect("bound address");
    thread::spawn(move || server.run());
    addr
}

/// One server shared by the tests that do not watch its gauges.
fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        start(&["--context-length", "2048", "--max-total-tokens", "16384", "--reasoning-parser", "deepseek-v3"])
    })
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": content}]});
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}

#[test]
fn chat_streaming_matches_non_streaming() {
    let addr = shared();
    let body = chat_body("Tell me a story", json!({"max_tokens": 12, "temperature": 0}));
    let whole = ok(&post(addr, "/v1/chat/completions", &body));
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "tiny");
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let usage = &whole["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + 12);

    let mut body = body.clone();
    merge(&mut body, json!({"stream": true, "stream_options": {"include_usage": true}}));
    let r = post(addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.json_events();
    let first = &events[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant", "the role goes out with the first token");
    assert!(first.get("content").is_some() || first.get("reasoning_content").is_some(), "{first}");
    let (content, reasoning, finish, usage_chunk) = collect_chat_stream(&events);
    assert_eq!(content, choice["message"]["content"].as_str().unwrap());
    assert_eq!(reasoning, choice["message"]["reasoning_content"].as_str().unwrap_or(""));
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(usage_chunk.as_ref(), Some(usage));
}

/// With thinking on, DeepSeek-V3.2's prompt ends in `<think>`: the generated text up to the
/// first `</think>` is reasoning, the rest the answer. Checked against the raw generation of
/// the same rendered prompt, on seeds whose samples do close the think block.
#[test]
fn reasoning_is_split_at_the_end_of_thinking() {
    let addr = shared();
    let mut split_seen = false;
    for seed in 0..24 {
        let body = chat_body(
            "Think first",
            json!({"max_tokens": 200, "temperature": 1.0, "seed": seed,
                   "chat_template_kwargs": {"thinking": true}}),
        );
        let r = ok(&post(addr, "/v1/chat/completions", &body));
        let msg = &r["choices"][0]["message"];
        let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
        // The same request through the raw API: the rendered prompt is what /v1/tokenize of
        // the chat's prompt text gives, so send the tokens the chat request used.
        let raw = ok(&post(
            addr,
            "/generate",
            &json!({"text": "<｜begin▁of▁sentence｜><｜User｜>Think first<｜Assistant｜><think>",
                    "sampling_params": {"max_new_tokens": 200, "temperature": 1.0, "sampling_seed": seed,
                                        "skip_special_tokens": true}}),
        ));
        assert_eq!(raw["meta_info"]["prompt_tokens"].as_u64().unwrap(), prompt_tokens);
        let text = raw["text"].as_str().unwrap();
        let reasoning = msg["reasoning_content"].as_str().unwrap_or("");
        let content = msg["content"].as_str().unwrap_or("");
        match text.split_once("</think>") {
            Some((r, c)) => {
                split_seen = true;
                assert_eq!((reasoning, content), (r.trim_start_matches("<think>"), c), "seed {seed}");
            }
            None => assert_eq!((reasoning, content), (text, ""), "seed {seed}"),
        }
    }
    assert!(split_seen, "no sample closed its think block; pick other seeds");
}

#[test]
fn tool_call_round_trip_is_accepted_and_encoded() {
    let addr = shared();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ]);
    let body = json!({"model": "tiny", "messages": messages, "tools": tools, "max_tokens": 4, "temperature": 0});
    let r = ok(&post(addr, "/v1/chat/completions", &body));
    // The prompt holds the tool schema, the DSML call and the function result.
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    let without_tools = ok(&post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 1}),
    ));
    assert!(prompt_tokens > without_tools["usage"]["prompt_tokens"].as_u64().unwrap() + 100, "{r}");
    let bad_args = json!([
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "get_weather", "arguments": "{not json"}}]},
    ]);
    let r = post(addr, "/v1/chat/completions", &json!({"messages": bad_args, "tools": tools}));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn stop_strings_cut_the_output_and_are_reported() {
    let addr = shared();
    let base = json!({"prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0});
    let full = ok(&post(addr, "/v1/completions", &base));
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "too little text to cut: {text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let before = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut body = base.clone();
        merge(&mut body, json!({"stop": [stop.clone()], "stream": stream}));
        let r = post(addr, "/v1/completions", &body);
        let (got, finish, matched) = if stream {
            let events = r.json_events();
            let text: String = events.iter().map(|e| e["choices"][0]["text"].as_str().unwrap_or("")).collect();
            let last = &events.last().unwrap()["choices"][0];
            (text, last["finish_reason"].clone(), last["matched_stop"].clone())
        } else {
            let v = ok(&r);
            let c = &v["choices"][0];
            (c["text"].as_str().unwrap().to_string(), c["finish_reason"].clone(), c["matched_stop"].clone())
        };
        assert_eq!(got, before, "stream={stream}");
        assert_eq!(finish, "stop");
        assert_eq!(matched, json!(stop));
    }
}

#[test]
fn n_choices_and_seeded_sampling_are_reproducible() {
    let addr = shared();
    let body = chat_body("Pick a word", json!({"max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3}));
    let a = ok(&post(addr, "/v1/chat/completions", &body));
    let b = ok(&post(addr, "/v1/chat/completions", &body));
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                assert_eq!(c["index"], i);
                format!("{}|{}", c["message"]["reasoning_content"], c["message"]["content"])
            })
            .collect()
    };
    assert_eq!(texts(&a), texts(&b), "same seed, same samples");
    assert_eq!(a["usage"]["completion_tokens"], 24);
    let ta = texts(&a);
    assert!(ta[0] != ta[1] || ta[1] != ta[2], "the choices all sampled the same: {ta:?}");
    let mut other = body.clone();
    merge(&mut other, json!({"seed": 8}));
    assert_ne!(texts(&ok(&post(addr, "/v1/chat/completions", &other))), ta);
}

#[test]
fn logprobs_are_reported_and_normalized() {
    let addr = shared();
    let body = chat_body("hi", json!({"max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 4}));
    let v = ok(&post(addr, "/v1/chat/completions", &body));
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len(), 3);
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(e["token"], top[0]["token"]);
        assert!((e["logprob"].as_f64().unwrap() - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{lps:?}");
    }
}

/// `--kv-cache-dtype fp8_e4m3` serves, and `/get_server_info` says which cache runs.
#[test]
fn fp8_kv_cache_serves_and_reports_itself() {
    assert_eq!(ok(&get(shared(), "/get_server_info"))["kv_cache_dtype"], "auto");
    let addr = start(&["--kv-cache-dtype", "fp8_e4m3", "--max-total-tokens", "2048"]);
    assert_eq!(ok(&get(addr, "/get_server_info"))["kv_cache_dtype"], "fp8_e4m3");
    let out = ok(&post(addr, "/generate", &json!({"text": "hello world", "sampling_params": {"max_new_tokens": 5}})));
    assert_eq!(out["meta_info"]["completion_tokens"], 5);
}

#[test]
fn native_generate_and_info_endpoints() {
    let addr = shared();
    let info = ok(&get(addr, "/get_model_info"));
    assert_eq!(info["is_generation"], true);
    assert_eq!(info["model_type"], "deepseek_v32");
    let models = ok(&get(addr, "/v1/models"));
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["max_model_len"], CONTEXT);
    assert_eq!(get(addr, "/health").status, 200);

    let tokens = ok(&post(addr, "/v1/tokenize", &json!({"prompt": "hello world"})));
    let ids = tokens["tokens"].clone();
    assert_eq!(tokens["count"], ids.as_array().unwrap().len());
    let text = ok(&post(addr, "/v1/detokenize", &json!({"tokens": ids})));
    assert_eq!(text["text"], "hello world");

    let by_text = ok(&post(
        addr,
        "/generate",
        &json!({"text": "hello world",
        "sampling_params": {"max_new_tokens": 6, "temperature": 0}}),
    ));
    let by_ids = ok(&post(
        addr,
        "/generate",
        &json!({"input_ids": ids,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0}}),
    ));
    assert_eq!(by_text["text"], by_ids["text"]);
    assert_eq!(by_text["output_ids"].as_array().unwrap().len(), 6);
    assert_eq!(by_text["meta_info"]["finish_reason"], json!({"type": "length", "length": 6}));

    let r = post(
        addr,
        "/generate",
        &json!({"input_ids": ids, "stream": true,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0}}),
    );
    let events = r.json_events();
    // SGLang streams the whole text so far in each event.
    assert_eq!(events.last().unwrap()["text"], by_text["text"]);
    let lens: Vec<usize> = events.iter().map(|e| e["text"].as_str().unwrap().len()).collect();
    assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");

    let metrics = get(addr, "/metrics");
    let text = String::from_utf8(metrics.body).unwrap();
    for name in [
        "flashseek_generation_tokens_total",
        "flashseek_time_to_first_token_seconds_bucket",
        "flashseek_inter_token_latency_seconds_count",
        "flashseek_num_running_reqs",
        "flashseek_kv_blocks_used",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
}

fn error_of(r: &http_client::Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["code"], status, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let addr = shared();
    let chat = "/v1/chat/completions";
    error_of(&request(addr, "POST", chat, b"{\"messages\": ["), 400);
    error_of(&request(addr, "POST", chat, b"not json"), 400);
    let v = error_of(&post(addr, chat, &json!({"messages": "hi"})), 400);
    assert_eq!(v["error"]["param"], "messages");
    let v = error_of(&post(addr, chat, &chat_body("x", json!({"max_tokens": "ten"}))), 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"), "{v}");
    error_of(&post(addr, chat, &json!({"messages": []})), 400);
    error_of(&post(addr, chat, &json!({"messages": [{"role": "wizard", "content": "x"}]})), 400);
    error_of(&post(addr, chat, &chat_body("x", json!({"temperature": -1}))), 400);
    error_of(&post(addr, chat, &chat_body("x", json!({"top_p": 0}))), 400);
    error_of(&post(addr, chat, &chat_body("x", json!({"n": 0}))), 400);
    error_of(&post(addr, chat, &chat_body("x", json!({"chat_template_kwargs": {"thinking": "yes"}}))), 400);
    error_of(&post(addr, chat, &json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})), 400);
    let v = error_of(&post(addr, chat, &chat_body("x", json!({"model": "gpt-4"}))), 404);
    assert_eq!(v["error"]["param"], "model");
    // Too long: the prompt alone, and the prompt plus max_tokens.
    let long: Vec<u32> = (0..CONTEXT as u32).map(|i| 10 + i % 500).collect();
    error_of(&post(addr, "/v1/completions", &json!({"prompt": long, "max_tokens": 1})), 400);
    error_of(&post(addr, "/v1/completions", &json!({"prompt": [5, 6, 7], "max_tokens": CONTEXT})), 400);
    error_of(&post(addr, "/v1/completions", &json!({"prompt": [999_999], "max_tokens": 1})), 400);
    error_of(&post(addr, "/generate", &json!({"sampling_params": {}})), 400);
    error_of(&get(addr, "/v1/nothing"), 404);
    error_of(&get(addr, chat), 405);
    // Still serving after all that.
    ok(&post(addr, chat, &chat_body("still there?", json!({"max_tokens": 2}))));
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8(get(addr, "/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn a_client_leaving_mid_stream_frees_its_blocks() {
    let addr = start(&["--max-total-tokens", "8192", "--context-length", "4096"]);
    let body = json!({"prompt": "a b c d e f g", "max_tokens": 3000, "ignore_eos": true, "stream": true});
    let (reader, first) = open_stream(addr, "/v1/completions", &body);
    assert!(first.starts_with("data: {"), "{first}");
    assert!(metric(addr, "flashseek_kv_blocks_used") > 0.0, "the running request holds blocks");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(addr, "flashseek_kv_blocks_used") > 0.0 || metric(addr, "flashseek_num_running_reqs") > 0.0 {
        assert!(Instant::now() < deadline, "blocks still held a minute after the client left");
        thread::sleep(Duration::from_millis(50));
    }
    let generated = metric(addr, "flashseek_generation_tokens_total");
    assert!(generated < 3000.0, "generation ran to the end ({generated} tokens) after the client left");
}

/// 200 concurrent streams, greedy: none fails and each equals the same request run alone.
/// Batch-invariant kernels make "equals" exact: without them a near-tie between the two most
/// likely tokens could break differently at another batch size.
#[test]
fn two_hundred_concurrent_streams_lose_nothing() {
    let addr = start(&["--max-total-tokens", "32768", "--context-length", "1024", "--enable-deterministic-inference"]);
    let body = move |i: usize| {
        json!({"model": "tiny", "messages": [{"role": "user", "content": format!("Request number {i}: go")}],
               "max_tokens": 16, "temperature": 0, "stream": true, "ignore_eos": true})
    };
    let run = move |i: usize| {
        let r = post(addr, "/v1/chat/completions", &body(i));
        assert_eq!(r.status, 200, "request {i}");
        let (content, reasoning, finish, _) = collect_chat_stream(&r.json_events());
        assert_eq!(finish.as_deref(), Some("length"), "request {i}");
        format!("{reasoning}|{content}")
    };
    let concurrent: Vec<String> = {
        let handles: Vec<_> = (0..200).map(|i| thread::spawn(move || run(i))).collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    };
    for (i, got) in concurrent.iter().enumerate() {
        assert_eq!(got, &run(i), "request {i} differs from the same request alone");
    }
}

/// A V3 model renders its Jinja `chat_template`; `--chat-template` replaces it; `deepseek-r1`
/// treats the whole output as reasoning until `</think>`.
#[test]
fn jinja_template_override_and_r1_reasoning() {
    let v3 = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v3");
    let dir = std::env::temp_dir().join(format!("flashseek-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("plain.jinja");
    std::fs::write(&template, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}").unwrap();
    let serve = |extra: &[&str]| {
        let mut argv =
            vec!["serve", "--model-path", v3, "--port", "0", "--max-total-tokens", "8192", "--context-length", "1024"];
        argv.extend_from_slice(extra);
        let server = launch::start(&Cli::parse_from(argv).serve).expect("server starts");
        let addr = server.local_addr().expect("bound address");
        thread::spawn(move || server.run());
        addr
    };
    let prompt_tokens = |addr: SocketAddr, text: &str| {
        ok(&post(addr, "/v1/tokenize", &json!({"prompt": text})))["count"].as_u64().unwrap()
    };
    let body = json!({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 24, "temperature": 0});

    let jinja = serve(&["--reasoning-parser", "deepseek-r1"]);
    let r = ok(&post(jinja, "/v1/chat/completions", &body));
    // DeepSeek-V3's template: BOS, the user turn, the assistant tag.
    let rendered = "<｜begin▁of▁sentence｜><｜User｜>Hello there<｜Assistant｜>";
    assert_eq!(r["usage"]["prompt_tokens"].as_u64().unwrap(), prompt_tokens(jinja, rendered));
    let raw = ok(&post(
        jinja,
        "/generate",
        &json!({"text": rendered,
        "sampling_params": {"max_new_tokens": 24, "temperature": 0}}),
    ));
    let text = raw["text"].as_str().unwrap();
    let msg = &r["choices"][0]["message"];
    let (reasoning, content) = match text.split_once("</think>") {
        Some((r, c)) => (r.trim_start_matches("<think>"), c),
        None => (text, ""),
    };
    assert_eq!(msg["reasoning_content"].as_str().unwrap_or(""), reasoning);
    assert_eq!(msg["content"].as_str().unwrap_or(""), content);

    let plain = serve(&["--chat-template", template.to_str().unwrap()]);
    let r = ok(&post(plain, "/v1/chat/completions", &body));
    assert_eq!(r["usage"]["prompt_tokens"].as_u64().unwrap(), prompt_tokens(plain, "[user] Hello there\n"));
    std::fs::remove_dir_all(&dir).ok();
}
