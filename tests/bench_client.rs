//! The benchmark clients against in-process mock servers that speak SGLang's and OpenAI's HTTP
//! protocols with canned token streams and known delays.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use flashseek::bench::accuracy::{answer_value, few_shot_prefix, few_shot_prompt, signed_answer_value, Example};
use flashseek::bench::dataset::{poisson_arrivals, random_lens};
use flashseek::bench::stats::{mean, percentile, std, Summary};
use flashseek::bench::{run_accuracy, run_serve, AccuracyArgs, ServeArgs, ServeReport};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Mock server

/// How the mock answers: delays, tokens per streamed event, and the text it "generates" for a
/// text prompt (accuracy tests).
#[derive(Clone)]
struct MockCfg {
    ttft: Duration,
    itl: Duration,
    tokens_per_event: usize,
    vocab_size: Option<u64>,
    answer: fn(&str) -> String,
}

impl Default for MockCfg {
    fn default() -> Self {
        MockCfg {
            ttft: Duration::from_millis(40),
            itl: Duration::from_millis(10),
            tokens_per_event: 1,
            vocab_size: Some(1000),
            answer: |_| "tok".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    body: Value,
}

struct Mock {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    load: Arc<Load>,
}

/// Streams in progress at the mock. A stream counts from its first byte until just before its
/// `[DONE]`, so a client that waits for `[DONE]` before its next request never sees its own
/// previous stream counted.
#[derive(Default)]
struct Load {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

impl Load {
    fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Mock {
    fn start(cfg: MockCfg) -> Mock {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let load = Arc::new(Load::default());
        for _ in 0..48 {
            let (server, cfg, seen) = (server.clone(), cfg.clone(), seen.clone());
            let load = load.clone();
            thread::spawn(move || {
                while let Ok(req) = server.recv() {
                    handle(req, &cfg, &seen, &load);
                }
            });
        }
        Mock { base: format!("http://127.0.0.1:{port}"), seen, load }
    }

    /// Requests to `path`, in arrival order.
    fn requests(&self, path: &str) -> Vec<Seen> {
        let mut v: Vec<Seen> = self.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect();
        v.sort_by_key(|s| s.at);
        v
    }
}

fn handle(mut req: tiny_http::Request, cfg: &MockCfg, seen: &Mutex<Vec<Seen>>, load: &Load) {
    let at = Instant::now();
    let mut text = String::new();
    req.as_reader().read_to_string(&mut text).unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let path = req.url().to_string();
    seen.lock().unwrap().push(Seen { at, path: path.clone(), body: body.clone() });
    match path.as_str() {
        "/get_model_info" => {
            let mut info = json!({"model_path": "mock/model"});
            if let Some(v) = cfg.vocab_size {
                info["vocab_size"] = json!(v);
            }
            respond_json(req, &info)
        }
        "/v1/models" => respond_json(req, &json!({"data": [{"id": "mock-model"}]})),
        "/v1/tokenize" => {
            let n = body["prompt"].as_str().unwrap().split_whitespace().count();
            respond_json(req, &json!({"tokens": vec![7; n], "count": n}))
        }
        "/generate" => generate(req, cfg, &body, load),
        "/v1/completions" | "/v1/chat/completions" => openai(req, cfg, &body, path == "/v1/chat/completions", load),
        _ => req.respond(tiny_http::Response::empty(404)).unwrap(),
    }
}

fn respond_json(req: tiny_http::Request, v: &Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
    req.respond(tiny_http::Response::from_string(v.to_string()).with_header(header)).unwrap();
}

/// Streams `events` as SSE over a chunked response, sleeping before each, then `[DONE]`.
fn stream(req: tiny_http::Request, events: Vec<(Duration, Value)>, load: &Load) {
    load.enter();
    let mut w = req.into_writer();
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    w.write_all(head.as_bytes()).unwrap();
    w.flush().unwrap();
    let payloads = events.into_iter().map(|(d, v)| (d, v.to_string())).chain([(Duration::ZERO, "[DONE]".into())]);
    for (delay, data) in payloads {
        thread::sleep(delay);
        if data == "[DONE]" {
            load.leave();
        }
        let event = format!("data: {data}\n\n");
        if write!(w, "{:x}\r\n{event}\r\n", event.len()).and_then(|_| w.flush()).is_err() {
            return;
        }
    }
    let _ = w.write_all(b"0\r\n\r\n").and_then(|_| w.flush());
}

/// Event boundaries: how many tokens each streamed event adds, and the delay before it.
fn token_schedule(cfg: &MockCfg, n: usize) -> Vec<(Duration, usize)> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < n {
        let k = cfg.tokens_per_event.min(n - done);
        let delay = if done == 0 { cfg.ttft } else { cfg.itl * k as u32 };
        done += k;
        out.push((delay, k));
    }
    out
}

fn generate(req: tiny_http::Request, cfg: &MockCfg, body: &Value, load: &Load) {
    let prompt_tokens = body["input_ids"].as_array().map_or(0, Vec::len);
    let n = body["sampling_params"]["max_new_tokens"].as_u64().unwrap() as usize;
    if let (Some(text), false) = (body["text"].as_str(), body["stream"] == json!(true)) {
        let answer = (cfg.answer)(text);
        return respond_json(req, &json!({"text": answer, "meta_info": {"completion_tokens": 3}}));
    }
    if body["stream"] == json!(false) {
        thread::sleep(cfg.ttft + cfg.itl * (n.saturating_sub(1)) as u32);
        let meta = json!({"prompt_tokens": prompt_tokens, "completion_tokens": n, "finish_reason": {"type": "length"}});
        return respond_json(req, &json!({"text": "tok ".repeat(n), "meta_info": meta}));
    }
    let mut total = 0;
    let events = token_schedule(cfg, n)
        .into_iter()
        .map(|(delay, k)| {
            total += k;
            let meta = json!({"prompt_tokens": prompt_tokens, "completion_tokens": total, "finish_reason": null});
            (delay, json!({"text": "tok ".repeat(total), "meta_info": meta}))
        })
        .collect();
    stream(req, events, load)
}

fn openai(req: tiny_http::Request, cfg: &MockCfg, body: &Value, chat: bool, load: &Load) {
    let n = body["max_tokens"].as_u64().unwrap() as usize;
    if body["stream"] == json!(false) {
        let question = body["messages"][0]["content"].as_str().unwrap_or("");
        let reply = json!({
            "choices": [{"message": {"role": "assistant", "content": (cfg.answer)(question)}}],
            "usage": {"completion_tokens": 5},
        });
        return respond_json(req, &reply);
    }
    let mut events: Vec<(Duration, Value)> = Vec::new();
    if chat {
        events.push((Duration::ZERO, json!({"choices": [{"delta": {"role": "assistant"}}]})));
    }
    for (i, (delay, k)) in token_schedule(cfg, n).into_iter().enumerate() {
        let text = "x".repeat(k);
        let choice = match (chat, i) {
            (false, _) => json!({"text": text}),
            (true, 0) => json!({"delta": {"reasoning_content": text}}),
            (true, _) => json!({"delta": {"content": text}}),
        };
        events.push((delay, json!({"choices": [choice]})));
    }
    events.push((Duration::ZERO, json!({"choices": [], "usage": {"completion_tokens": n}})));
    stream(req, events, load)
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[derive(Parser)]
struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Parser)]
struct AccuracyCli {
    #[command(flatten)]
    args: AccuracyArgs,
}

fn serve_args(base: &str, extra: &[&str]) -> ServeArgs {
    let head = ["bench", "--base-url", base];
    let argv = head.iter().chain(extra).copied();
    ServeCli::try_parse_from(argv).unwrap().args
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flashseek-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn assert_ordered(s: &Summary, what: &str) {
    assert!(s.median <= s.p95 + 1e-9 && s.p95 <= s.p99 + 1e-9 && s.p99 <= s.max + 1e-9, "{what}: {s:?}");
    assert!(s.mean <= s.max + 1e-9 && s.std >= 0.0, "{what}: {s:?}");
}

// ---------------------------------------------------------------------------------------------
// bench serve

#[test]
fn sglang_streaming_random_workload() {
    let mock = Mock::start(MockCfg::default());
    let args = serve_args(
        &mock.base,
        &[
            "--dataset-name",
            "random",
            "--num-prompts",
            "20",
            "--random-input-len",
            "64",
            "--random-output-len",
            "16",
            "--random-range-ratio",
            "0.5",
            "--max-concurrency",
            "4",
        ],
    );
    let report = run_serve(&args).unwrap();
    let gens = mock.requests("/generate");
    assert_eq!(gens.len(), 21, "one warmup request plus 20 measured");
    let measured = &gens[1..];

    let mut input_total = 0;
    let mut output_total = 0;
    for g in measured {
        let ids = g.body["input_ids"].as_array().unwrap();
        assert!((32..=64).contains(&ids.len()), "input length {}", ids.len());
        assert!(ids.iter().all(|id| id.as_u64().unwrap() < 1000), "ids must be drawn below vocab_size");
        let out = g.body["sampling_params"]["max_new_tokens"].as_u64().unwrap() as usize;
        assert!((8..=16).contains(&out), "output length {out}");
        assert_eq!(g.body["sampling_params"]["ignore_eos"], json!(true));
        assert_eq!(g.body["stream"], json!(true));
        input_total += ids.len();
        output_total += out;
    }
    assert!(gens[0].body["sampling_params"]["max_new_tokens"].as_u64().unwrap() <= 32);

    assert_eq!((report.completed, report.failed, report.num_prompts), (20, 0, 20));
    assert_eq!(report.total_input_tokens, input_total);
    assert_eq!(report.total_output_tokens, output_total);
    assert_eq!(mock.load.peak.load(Ordering::SeqCst), 4);
    assert!(report.concurrency > 1.0 && report.concurrency <= 4.05, "concurrency {}", report.concurrency);

    let (ttft, itl, tpot, e2e) = (report.ttft_ms, report.itl_ms, report.tpot_ms, report.e2e_latency_ms);
    for (s, what) in [(&ttft, "ttft"), (&itl, "itl"), (&tpot, "tpot"), (&e2e, "e2e")] {
        assert_ordered(s, what);
    }
    assert!(ttft.median >= 39.0 && ttft.median < 200.0, "TTFT {ttft:?}");
    assert!(itl.median >= 5.0 && itl.median < 60.0, "ITL {itl:?}");
    assert!(tpot.mean >= 8.0 && tpot.mean < 60.0, "TPOT {tpot:?}");
    // At least 8 tokens: the TTFT delay plus 7 inter-token delays of 10 ms.
    assert!(e2e.median >= ttft.median + 60.0, "E2E {e2e:?} vs TTFT {ttft:?}");
    assert!(e2e.mean > ttft.mean);
    let expect_tput = report.total_output_tokens as f64 / report.duration;
    assert!((report.output_throughput - expect_tput).abs() < 1e-9);
    assert!((report.request_throughput - 20.0 / report.duration).abs() < 1e-9);
    assert!(
        (report.total_throughput - report.input_throughput - report.output_throughput).abs() < 1e-9,
        "total throughput is input plus output"
    );
}

#[test]
fn sglang_chunks_of_several_tokens_split_the_gap() {
    let cfg = MockCfg { tokens_per_event: 4, itl: Duration::from_millis(10), ..MockCfg::default() };
    let mock = Mock::start(cfg);
    let args = serve_args(
        &mock.base,
        &["--dataset-name", "random", "--num-prompts", "4", "--random-input-len", "8", "--random-output-len", "17"],
    );
    let args = ServeArgs { random_range_ratio: 1.0, ..args };
    let report = run_serve(&args).unwrap();
    assert_eq!(report.total_output_tokens, 4 * 17);
    // Events of 4 tokens arrive 40 ms apart; each token's share of the gap is 10 ms.
    assert!(report.itl_ms.median >= 9.0 && report.itl_ms.median < 40.0, "{:?}", report.itl_ms);
}

#[test]
fn sglang_without_streaming_has_ttft_equal_to_latency() {
    let mock =
        Mock::start(MockCfg { ttft: Duration::from_millis(20), itl: Duration::from_millis(2), ..MockCfg::default() });
    let args = serve_args(
        &mock.base,
        &["--dataset-name", "random", "--num-prompts", "6", "--random-output-len", "8", "--disable-stream"],
    );
    let report = run_serve(&args).unwrap();
    assert_eq!(report.completed, 6);
    assert_eq!(report.ttft_ms, report.e2e_latency_ms);
    assert_eq!(report.itl_ms, Summary::default(), "no streamed tokens, no inter-token latencies");
    assert_eq!(mock.requests("/generate")[1].body["stream"], json!(false));
}

#[test]
fn openai_completions_count_tokens_from_usage() {
    let cfg = MockCfg {
        tokens_per_event: 2,
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(2),
        vocab_size: None,
        ..MockCfg::default()
    };
    let mock = Mock::start(cfg);
    let args = serve_args(
        &mock.base,
        &[
            "--backend",
            "openai",
            "--dataset-name",
            "random",
            "--random-vocab-size",
            "500",
            "--num-prompts",
            "8",
            "--random-output-len",
            "10",
            "--random-range-ratio",
            "1",
        ],
    );
    let report = run_serve(&args).unwrap();
    // 5 text chunks of 2 tokens each per request; the usage chunk says 10.
    assert_eq!(report.total_output_tokens, 80);
    let reqs = mock.requests("/v1/completions");
    let body = &reqs[1].body;
    assert_eq!(body["model"], json!("mock-model"));
    assert_eq!(body["stream_options"]["include_usage"], json!(true));
    assert!(body["prompt"].as_array().unwrap().iter().all(|id| id.as_u64().unwrap() < 500));
    assert_eq!(
        report.total_input_tokens,
        reqs[1..].iter().map(|r| r.body["prompt"].as_array().unwrap().len()).sum::<usize>()
    );
}

#[test]
fn missing_vocab_size_is_a_clear_error() {
    let mock = Mock::start(MockCfg { vocab_size: None, ..MockCfg::default() });
    let err = run_serve(&serve_args(&mock.base, &["--dataset-name", "random", "--num-prompts", "2"])).unwrap_err();
    assert!(format!("{err:#}").contains("--random-vocab-size"), "{err:#}");
}

fn sharegpt_file() -> PathBuf {
    let conv = |turns: &[&str]| json!({"id": "x", "conversations": turns.iter().map(|t| json!({"from": "human", "value": t})).collect::<Vec<_>>()});
    let data = json!([
        conv(&["one two three", "a b c d"]),
        conv(&["solo"]),                              // one turn: dropped
        conv(&["hi", "a b c"]),                       // 1-token prompt: dropped
        conv(&["four five six seven", "x"]),          // 1-token reply: dropped
        conv(&["eight nine", "p q r s t u"]),
        {"conversation": [{"value": "ten eleven twelve"}, {"value": "y z"}]},
        conv(&["thirteen fourteen fifteen sixteen", "k l m"]),
    ]);
    let path = temp_path("sharegpt.json");
    std::fs::write(&path, data.to_string()).unwrap();
    path
}

#[test]
fn openai_chat_on_sharegpt_filters_and_counts() {
    let mock =
        Mock::start(MockCfg { ttft: Duration::from_millis(5), itl: Duration::from_millis(1), ..MockCfg::default() });
    let path = sharegpt_file();
    let args = serve_args(
        &mock.base,
        &["--backend", "openai-chat", "--dataset-path", path.to_str().unwrap(), "--num-prompts", "10"],
    );
    let report = run_serve(&args).unwrap();
    // Kept: 3+4, 2+6, 3+2, 4+3 (prompt + reply words, the mock's tokenizer counts words).
    assert_eq!((report.completed, report.failed), (4, 0));
    assert_eq!(report.total_input_tokens, 3 + 2 + 3 + 4);
    assert_eq!(report.total_output_tokens, 4 + 6 + 2 + 3);
    let chats = mock.requests("/v1/chat/completions");
    let asked: Vec<usize> = chats[1..].iter().map(|c| c.body["max_tokens"].as_u64().unwrap() as usize).collect();
    assert_eq!(asked.iter().sum::<usize>(), 15);
    assert!(chats.iter().all(|c| c.body["messages"][0]["role"] == json!("user")));
}

#[test]
fn sharegpt_output_len_overrides_and_context_len_prunes() {
    let mock = Mock::start(MockCfg { ttft: Duration::from_millis(1), itl: Duration::ZERO, ..MockCfg::default() });
    let path = sharegpt_file();
    let p = path.to_str().unwrap();
    let args = serve_args(
        &mock.base,
        &["--dataset-path", p, "--num-prompts", "3", "--sharegpt-output-len", "5", "--sharegpt-context-len", "8"],
    );
    let report = run_serve(&args).unwrap();
    // With 5 output tokens only prompts of 2 or 3 words fit in 8; three of them exist.
    assert_eq!(report.completed, 3);
    assert_eq!(report.total_output_tokens, 15);
    assert_eq!(report.total_input_tokens, 3 + 2 + 3);
    let sent = mock.requests("/generate");
    assert!(sent[1..].iter().all(|g| g.body["text"].is_string() && g.body.get("input_ids").is_none()));
}

#[test]
fn chat_backend_refuses_token_id_prompts() {
    let err = run_serve(&serve_args("http://127.0.0.1:9", &["--backend", "openai-chat", "--dataset-name", "random"]))
        .unwrap_err();
    assert!(format!("{err}").contains("token ids"), "{err}");
}

#[test]
fn poisson_rate_is_roughly_the_requested_rate() {
    let mock = Mock::start(MockCfg { ttft: Duration::ZERO, itl: Duration::ZERO, ..MockCfg::default() });
    let args = serve_args(
        &mock.base,
        &[
            "--dataset-name",
            "random",
            "--num-prompts",
            "60",
            "--random-input-len",
            "4",
            "--random-output-len",
            "2",
            "--request-rate",
            "40",
            "--seed",
            "7",
        ],
    );
    let report = run_serve(&args).unwrap();
    assert_eq!(report.completed, 60);
    let gens = mock.requests("/generate");
    let span = gens.last().unwrap().at.duration_since(gens[1].at).as_secs_f64();
    let rate = 59.0 / span;
    // 59 exponential gaps: the sampling spread alone is about 13%.
    assert!((24.0..=60.0).contains(&rate), "observed {rate} req/s for 40 requested");
}

#[test]
fn poisson_arrivals_have_exponential_gaps() {
    let times = poisson_arrivals(20_000, 10.0, 3);
    assert_eq!(times[0], 0.0);
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 0.0));
    let m = mean(&gaps);
    // Exponential with mean 0.1: the standard deviation equals the mean; 20k samples put the
    // sample mean within 1% (1 sigma) of 0.1.
    assert!((m - 0.1).abs() < 0.004, "mean gap {m}");
    assert!((std(&gaps) / m - 1.0).abs() < 0.05, "coefficient of variation {}", std(&gaps) / m);
    let median = percentile(&gaps, 50.0);
    assert!((median - 0.1 * std::f64::consts::LN_2).abs() < 0.004, "median gap {median}");
    assert_eq!(times, poisson_arrivals(20_000, 10.0, 3), "seeded");
    assert_eq!(poisson_arrivals(5, f64::INFINITY, 3), vec![0.0; 5]);
}

#[test]
fn random_lengths_follow_the_range_ratio() {
    let lens = random_lens(1024, 0.5, 5000, 1);
    assert!(lens.iter().all(|l| (512..=1024).contains(l)));
    assert_eq!(*lens.iter().min().unwrap(), 512);
    assert_eq!(*lens.iter().max().unwrap(), 1024);
    let m = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
    // Uniform on 512..=1024: mean 768, standard error 148 / sqrt(5000) = 2.1.
    assert!((m - 768.0).abs() < 10.0, "mean {m}");

    let lens = random_lens(100, 0.0, 5000, 2);
    assert!(lens.iter().all(|l| (1..=100).contains(l)));
    assert_eq!((*lens.iter().min().unwrap(), *lens.iter().max().unwrap()), (1, 100));

    assert!(random_lens(300, 1.0, 100, 3).iter().all(|&l| l == 300));
    assert_eq!(random_lens(0, 0.5, 3, 4), vec![0, 0, 0]);
    assert!(random_lens(7, 0.99, 50, 5).iter().all(|&l| (6..=7).contains(&l)), "floor(7 * 0.99) = 6");
    assert_eq!(random_lens(64, 0.3, 10, 9), random_lens(64, 0.3, 10, 9));
}

#[test]
fn table_matches_sglang_layout() {
    let mock = Mock::start(MockCfg { ttft: Duration::from_millis(1), itl: Duration::ZERO, ..MockCfg::default() });
    let args = serve_args(
        &mock.base,
        &["--dataset-name", "random", "--num-prompts", "3", "--random-output-len", "4", "--max-concurrency", "4"],
    );
    let table = run_serve(&args).unwrap().table();
    let lines: Vec<&str> = table.lines().collect();
    // Expected strings printed by Python with SGLang's format specs, e.g.
    // "{:<40} {:<10}".format("Backend:", "sglang") and "{s:{c}^{n}}".format(s=.., n=50, c="-").
    assert_eq!(lines[0], "");
    assert_eq!(lines[1], "============ Serving Benchmark Result ============");
    assert_eq!(lines[2], "Backend:                                 sglang    ");
    assert_eq!(lines[3], "Traffic request rate:                    inf       ");
    assert_eq!(lines[4], "Max request concurrency:                 4         ");
    for rule in [
        "----------------End-to-End Latency----------------",
        "---------------Time to First Token----------------",
        "-----Time per Output Token (excl. 1st token)------",
        "---------------Inter-Token Latency----------------",
    ] {
        assert!(lines.contains(&rule), "missing {rule:?}");
    }
    assert_eq!(*lines.last().unwrap(), "=".repeat(50));
    let ttft = lines.iter().find(|l| l.starts_with("Mean TTFT (ms):")).unwrap();
    assert_eq!(ttft.len(), 51, "label padded to 40, a space, value padded to 10: {ttft:?}");
}

#[test]
fn output_file_appends_one_json_line_per_run() {
    let mock = Mock::start(MockCfg { ttft: Duration::from_millis(1), itl: Duration::ZERO, ..MockCfg::default() });
    let out = temp_path("results.jsonl");
    let _ = std::fs::remove_file(&out);
    let args = serve_args(
        &mock.base,
        &[
            "--dataset-name",
            "random",
            "--num-prompts",
            "2",
            "--random-output-len",
            "3",
            "--output-file",
            out.to_str().unwrap(),
        ],
    );
    let first: ServeReport = run_serve(&args).unwrap();
    run_serve(&args).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["completed"], json!(2));
    assert_eq!(rows[0]["backend"], json!("sglang"));
    assert_eq!(rows[0]["total_output_tokens"], json!(first.total_output_tokens));
    assert!(rows[0]["ttft_ms"]["p99"].is_number());
}

// ---------------------------------------------------------------------------------------------
// Failure handling: a raw TCP server that answers by connection number.

/// Connection `k` (from 0) gets: a good stream (or, for `"stream": false`, a JSON answer) when
/// `k % 3 == 0`, a 500 when `k % 3 == 1`, and a stream cut off mid-body when `k % 3 == 2`.
fn start_flaky_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for (k, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || serve_flaky(conn, k));
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn serve_flaky(mut conn: TcpStream, k: usize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).unwrap();
    let event = |n: usize| {
        let data = json!({"text": "tok ".repeat(n), "meta_info": {"completion_tokens": n}});
        let e = format!("data: {data}\n\n");
        format!("{:x}\r\n{e}\r\n", e.len())
    };
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let whole = String::from_utf8_lossy(&body).contains("\"stream\":false");
    let reply = match k % 3 {
        0 if whole => {
            let data = json!({"text": " #### 0", "meta_info": {"completion_tokens": 1}}).to_string();
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}", data.len())
        }
        0 => format!("{head}{}{}{}0\r\n\r\n", event(1), event(2), "e\r\ndata: [DONE]\n\n\r\n"),
        1 => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops".into(),
        _ => format!("{head}{}", event(1)),
    };
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.shutdown(Shutdown::Both);
}

#[test]
fn failed_requests_are_counted_not_fatal() {
    let base = start_flaky_server();
    let args = serve_args(
        &base,
        &[
            "--dataset-name",
            "random",
            "--random-vocab-size",
            "100",
            "--num-prompts",
            "9",
            "--random-output-len",
            "2",
            "--random-range-ratio",
            "1",
            "--max-concurrency",
            "1",
            "--warmup-requests",
            "0",
        ],
    );
    let report = run_serve(&args).unwrap();
    assert_eq!((report.completed, report.failed, report.num_prompts), (3, 6, 9));
    assert_eq!(report.total_output_tokens, 6);
    assert!(report.first_error.is_some());
    assert!(report.ttft_ms.mean > 0.0 && report.e2e_latency_ms.mean >= report.ttft_ms.mean);
}

#[test]
fn warmup_failure_and_unreachable_server_are_errors() {
    let base = start_flaky_server();
    // Connection 0 succeeds: use it up so the warmup lands on the 500.
    let _ = ureq_free_get(&base);
    let args = serve_args(&base, &["--dataset-name", "random", "--random-vocab-size", "100", "--num-prompts", "2"]);
    let err = run_serve(&args).unwrap_err();
    assert!(format!("{err}").contains("warmup failed"), "{err}");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let args = serve_args(&dead, &["--dataset-name", "random", "--random-vocab-size", "100", "--num-prompts", "2"]);
    assert!(run_serve(&args).is_err());
    let args = serve_args(&dead, &["--dataset-name", "random", "--num-prompts", "2"]);
    assert!(run_serve(&args).is_err(), "no vocab size and no server");
}

fn ureq_free_get(base: &str) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(base.trim_start_matches("http://"))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")?;
    let mut sink = Vec::new();
    conn.read_to_end(&mut sink).map(|_| ())
}

#[test]
fn all_failures_without_warmup_report_zeros() {
    let base = start_flaky_server();
    let _ = ureq_free_get(&base);
    let args = serve_args(
        &base,
        &[
            "--dataset-name",
            "random",
            "--random-vocab-size",
            "10",
            "--num-prompts",
            "2",
            "--max-concurrency",
            "1",
            "--warmup-requests",
            "0",
        ],
    );
    let report = run_serve(&args).unwrap();
    assert_eq!((report.completed, report.failed), (0, 2));
    assert_eq!(report.ttft_ms, Summary::default());
    assert_eq!(report.total_output_tokens, 0);
}

#[test]
fn rejects_bad_arguments() {
    for extra in [
        &["--random-range-ratio", "1.5"][..],
        &["--request-rate", "0"],
        &["--max-concurrency", "0"],
        &["--extra-request-body", "[1]"],
    ] {
        let mut argv = vec!["--dataset-name", "random", "--random-vocab-size", "10"];
        argv.extend_from_slice(extra);
        assert!(run_serve(&serve_args("http://127.0.0.1:9", &argv)).is_err(), "{extra:?}");
    }
    assert!(run_serve(&serve_args("https://example.com", &["--dataset-name", "random"])).is_err());
    assert!(run_serve(&serve_args("http://127.0.0.1:9", &[])).is_err(), "sharegpt needs a path");
}

// ---------------------------------------------------------------------------------------------
// bench accuracy

fn gsm8k_file(n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| json!({"question": format!("What is {i} times 3?"), "answer": format!("{i} * 3 = {}\n#### {}", i * 3, i * 3)}).to_string())
        .collect();
    let path = temp_path(&format!("gsm8k-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Answers question i: right when i % 4 == 0, right but followed by an invented next question
/// (which the stop string must cut) when i % 4 == 1, wrong when i % 4 == 2, numberless otherwise.
fn mock_answer(prompt: &str) -> String {
    let question = prompt.rsplit("Question: What is ").next().unwrap();
    let i: usize = question.split(' ').next().unwrap().parse().unwrap();
    match i % 4 {
        0 => format!(" {i} times 3 is {}.\n#### {}", i * 3, i * 3),
        1 => format!(" The answer is {}.\n\nQuestion: what is 99 + 1? Answer: 100", i * 3),
        2 => format!(" #### {}", i * 3 + 1),
        _ => " I do not know.".into(),
    }
}

fn accuracy_args(base: &str, extra: &[&str]) -> AccuracyArgs {
    let head = ["bench", "--base-url", base];
    let argv = head.iter().chain(extra).copied();
    AccuracyCli::try_parse_from(argv).unwrap().args
}

#[test]
fn accuracy_grades_k_shot_completions() {
    let mock = Mock::start(MockCfg { answer: mock_answer, ..MockCfg::default() });
    let data = gsm8k_file(10);
    let args = accuracy_args(
        &mock.base,
        &["--data-path", data.to_str().unwrap(), "--num-shots", "2", "--num-questions", "8", "--parallel", "3"],
    );
    let report = run_accuracy(&args).unwrap();
    // Questions 0..8: right for 0, 1, 4, 5; wrong for 2, 6; numberless for 3, 7.
    assert_eq!((report.num_questions, report.correct, report.invalid, report.failed), (8, 4, 2, 0));
    assert!((report.accuracy - 0.5).abs() < 1e-12 && (report.invalid_rate - 0.25).abs() < 1e-12);
    assert_eq!(report.output_tokens, 8 * 3);

    let gens = mock.requests("/generate");
    assert_eq!(gens.len(), 8);
    let prefix = "Question: What is 0 times 3?\nAnswer: 0 * 3 = 0\n#### 0\n\nQuestion: What is 1 times 3?\nAnswer: 1 * 3 = 3\n#### 3\n\n";
    for g in &gens {
        let text = g.body["text"].as_str().unwrap();
        assert!(text.starts_with(prefix), "{text:?}");
        assert!(text.ends_with("times 3?\nAnswer:"), "{text:?}");
        assert_eq!(g.body["sampling_params"]["stop"], json!(["Question", "Assistant:", "<|separator|>"]));
        assert_eq!(g.body["sampling_params"]["max_new_tokens"], json!(512));
        assert_eq!(g.body["sampling_params"]["temperature"], json!(0.0));
    }
}

#[test]
fn accuracy_chat_mode_sends_the_bare_question() {
    let mock = Mock::start(MockCfg {
        answer: |q| format!("{q} ... #### {}", 3 * q[8..].split(' ').next().unwrap().parse::<usize>().unwrap()),
        ..MockCfg::default()
    });
    let data = gsm8k_file(5);
    let args = accuracy_args(&mock.base, &["--data-path", data.to_str().unwrap(), "--chat", "--num-questions", "5"]);
    let report = run_accuracy(&args).unwrap();
    assert_eq!((report.correct, report.num_questions), (5, 5));
    assert_eq!(report.output_tokens, 25);
    let chats = mock.requests("/v1/chat/completions");
    assert_eq!(chats.len(), 5);
    assert!(chats.iter().all(|c| c.body["messages"][0]["content"].as_str().unwrap().starts_with("What is ")));
    assert_eq!(chats[0].body["model"], json!("mock-model"));
}

/// Question i ("What is 5 minus i?") has the label 5 - i, negative for i > 5; the mock answers
/// |5 - i| for odd i (a wrong sign when i > 5) and 5 - i otherwise.
fn signed_file(n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let r = 5 - i as i64;
            json!({"question": format!("What is 5 minus {i}?"), "answer": format!("#### {r}"), "category": format!("c{}", i % 3)})
                .to_string()
        })
        .collect();
    let path = temp_path(&format!("signed-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn signed_mock_answer(q: &str) -> String {
    let i: i64 = q.trim_start_matches("What is 5 minus ").trim_end_matches('?').parse().unwrap();
    let r = if i % 2 == 1 { (5 - i).abs() } else { 5 - i };
    format!("The answer is {r}.\n#### {r}")
}

#[test]
fn accuracy_grades_signs_and_categories_and_asks_for_thinking() {
    let mock = Mock::start(MockCfg { answer: signed_mock_answer, ..MockCfg::default() });
    let data = signed_file(12);
    let path = data.to_str().unwrap();
    let out = temp_path("accuracy-report.jsonl");
    let _ = std::fs::remove_file(&out);
    let args = ["--data-path", path, "--chat", "--thinking", "--num-questions", "12", "--num-shots", "0"];
    let unsigned = run_accuracy(&accuracy_args(&mock.base, &args)).unwrap();
    assert_eq!(unsigned.correct, 12, "without --signed the sign is not graded");
    let mut signed_args = args.to_vec();
    signed_args.extend(["--signed", "--output-file", out.to_str().unwrap()]);
    let signed = run_accuracy(&accuracy_args(&mock.base, &signed_args)).unwrap();
    // Wrong: odd i > 5, i.e. 7, 9 and 11 (categories c1, c0, c2).
    assert_eq!(signed.correct, 9);
    let cats: Vec<(String, usize, usize)> =
        signed.categories.iter().map(|c| (c.category.clone(), c.correct, c.num_questions)).collect();
    assert_eq!(cats, vec![("c0".into(), 3, 4), ("c1".into(), 3, 4), ("c2".into(), 3, 4)]);
    let chats = mock.requests("/v1/chat/completions");
    assert!(chats.iter().all(|c| c.body["chat_template_kwargs"] == json!({"thinking": true})));
    let written: Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(written["correct"], json!(9));
    assert_eq!(written["categories"][0]["category"], json!("c0"));
}

#[test]
fn signed_answer_values_keep_the_minus() {
    assert_eq!(signed_answer_value("The answer is -85.\n#### -85"), Some("-85".into()));
    assert_eq!(signed_answer_value("#### 85"), Some("85".into()));
    assert_eq!(signed_answer_value("so 47 - 138 = -91"), Some("-91".into()));
    assert_eq!(signed_answer_value("-1,234 apples"), Some("-1234".into()));
    assert_eq!(signed_answer_value("it is -0"), Some("0".into()));
    assert_eq!(signed_answer_value("agent -007"), None);
    assert_eq!(signed_answer_value("no digits"), None);
}

#[test]
fn accuracy_counts_failed_requests() {
    let base = start_flaky_server();
    let data = gsm8k_file(6);
    let args = accuracy_args(&base, &["--data-path", data.to_str().unwrap(), "--num-shots", "1", "--parallel", "1"]);
    let report = run_accuracy(&args).unwrap();
    // Connections 0 and 3 answer "#### 0" (right for question 0 only); the other four fail.
    assert_eq!((report.num_questions, report.failed, report.correct, report.invalid), (6, 4, 1, 0), "{report:?}");
    assert_eq!(report.output_tokens, 2);
    assert!(report.first_error.is_some());
}

#[test]
fn accuracy_rejects_bad_data() {
    let path = temp_path("bad.jsonl");
    std::fs::write(&path, "{\"question\": \"q\"}\n").unwrap();
    assert!(run_accuracy(&accuracy_args("http://127.0.0.1:9", &["--data-path", path.to_str().unwrap()])).is_err());
    let data = gsm8k_file(3);
    let args = accuracy_args("http://127.0.0.1:9", &["--data-path", data.to_str().unwrap(), "--num-shots", "4"]);
    assert!(run_accuracy(&args).is_err(), "more shots than examples");
}

#[test]
fn answer_extraction_matches_sglang() {
    // Expected values are what SGLang's get_answer_value returns (ast.literal_eval of the last
    // \d+ match after removing commas; a leading zero is a SyntaxError, i.e. invalid).
    assert_eq!(answer_value("The total is 1,234 apples."), Some("1234".into()));
    assert_eq!(answer_value("#### 18"), Some("18".into()));
    assert_eq!(answer_value("costs $3.50"), Some("50".into()));
    assert_eq!(answer_value("it drops by -5"), Some("5".into()));
    assert_eq!(answer_value("00"), Some("0".into()));
    assert_eq!(answer_value("agent 007"), None);
    assert_eq!(answer_value("no digits here"), None);
    assert_eq!(answer_value("12 then 100000000000000000000000000001"), Some("100000000000000000000000000001".into()));
}

#[test]
fn few_shot_prompt_format() {
    let shots = [
        Example { question: "Q1?".into(), answer: "A1\n#### 1".into(), category: None },
        Example { question: "Q2?".into(), answer: "A2\n#### 2".into(), category: None },
    ];
    let prefix = few_shot_prefix(&shots);
    assert_eq!(
        few_shot_prompt(&prefix, "Q3?"),
        "Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: Q2?\nAnswer: A2\n#### 2\n\nQuestion: Q3?\nAnswer:"
    );
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[test]
fn percentiles_match_numpy() {
    // Computed with numpy (default method="linear") in /work/refvenv:
    //   x = [3, 1, 4, 1, 5, 9, 2, 6]
    //   np.percentile(x, 99) = 8.79, np.percentile(x, 95) = 7.949999999999998,
    //   np.median(x) = 3.5, np.mean(x) = 3.875, np.std(x) = 2.5708704751503917,
    //   np.percentile(x, 0) = 1.0, np.percentile(x, 100) = 9.0, np.percentile(x, 37.5) = 2.625
    let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
    // Bit-exact: the same interpolation formula gives the same float.
    let close = |a: f64, b: f64| a == b;
    assert!(close(percentile(&x, 99.0), 8.79), "{}", percentile(&x, 99.0));
    assert!(close(percentile(&x, 95.0), 7.949999999999998));
    assert!(close(percentile(&x, 50.0), 3.5));
    assert!(close(percentile(&x, 0.0), 1.0));
    assert!(close(percentile(&x, 100.0), 9.0));
    assert!(close(percentile(&x, 37.5), 2.625));
    assert!(close(mean(&x), 3.875));
    assert!(close(std(&x), 2.5708704751503917));
    let s = Summary::of(&x);
    assert!(close(s.median, 3.5) && close(s.p95, 7.949999999999998) && close(s.p99, 8.79) && s.max == 9.0);

    // Where numpy's interpolation from the upper end differs in the last bit from a + (b - a) t:
    //   y = [42.562, 10.15, 25.992, 22.083, 64.693, 35.029, 18.032]
    //   np.percentile(y, 95) = 58.053699999999985, np.percentile(y, 99) = 63.36513999999999
    let y = [42.562, 10.15, 25.992, 22.083, 64.693, 35.029, 18.032];
    assert!(close(percentile(&y, 95.0), 58.053699999999985), "{}", percentile(&y, 95.0));
    assert!(close(percentile(&y, 99.0), 63.36513999999999), "{}", percentile(&y, 99.0));

    // np.percentile([10, 20], 99) = 19.9, (.., 95) = 19.5, np.median = 15.0
    assert!(close(percentile(&[20.0, 10.0], 99.0), 19.9));
    assert!(close(percentile(&[20.0, 10.0], 95.0), 19.5));
    assert!(close(percentile(&[20.0, 10.0], 50.0), 15.0));
    // A single value: every percentile is that value, std is 0.
    let one = Summary::of(&[0.25]);
    assert_eq!((one.median, one.p99, one.std, one.max), (0.25, 0.25, 0.0, 0.25));
    assert_eq!(Summary::of(&[]), Summary::default());
    assert_eq!(percentile(&[], 50.0), 0.0);
    let scaled = Summary::of(&[0.001, 0.003]).scaled(1e3);
    assert!(close(scaled.mean, 2.0) && close(scaled.max, 3.0));
}
