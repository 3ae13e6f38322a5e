//! The bundled model (models/flashseek-v32-arith) served as `flashseek serve` serves it with no
//! arguments: it answers arithmetic with its working as reasoning, and the engine holds its
//! accuracy on the 500 held-out problems. Its logits against the PyTorch model are checked in
//! tests/model_fixtures.rs.

mod http_client;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::thread;

use clap::Parser;
use flashseek::bench::{run_accuracy, AccuracyArgs};
use flashseek::bundled;
use flashseek::server::launch::{self, ServeArgs};
use http_client::{collect_chat_stream, get, ok, post};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Parser)]
struct AccuracyCli {
    #[command(flatten)]
    args: AccuracyArgs,
}

/// The server of `flashseek serve` with no model path, shared by the tests.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let args = Cli::parse_from(["serve", "--port", "0", "--max-total-tokens", "65536"]).serve;
        let server = launch::start(&args).expect("the bundled model serves");
        let addr = server.local_addr().expect("bound address");
        thread::spawn(move || server.run());
        addr
    })
}

/// It thinks by default (generation_config.json) and the deepseek-v3 reasoning parser is on: the
/// working streams as reasoning and the answer as content, greedily (`do_sample: false`).
#[test]
fn streams_its_working_as_reasoning_and_the_answer_as_content() {
    let addr = server();
    let models = ok(&get(addr, "/v1/models"));
    assert_eq!(models["data"][0]["id"], bundled::NAME);
    for (a, b) in [(47, 38), (305, 198), (72, 415)] {
        let body = json!({
            "messages": [{"role": "user", "content": format!("What is {a} + {b}?")}],
            "stream": true,
        });
        let events = post(addr, "/v1/chat/completions", &body).json_events();
        let (content, reasoning, finish, _) = collect_chat_stream(&events);
        assert_eq!(finish.as_deref(), Some("stop"));
        assert!(
            reasoning.contains("so far") && reasoning.ends_with(&format!("{a} + {b} = {}.", a + b)),
            "{reasoning:?}"
        );
        assert_eq!(content, format!("The answer is {}.\n#### {}", a + b, a + b));
    }
}

/// With thinking off, everything the model writes is the answer. The model has not learned chat
/// mode (model card, "Limits"): it still writes its working and a `</think>` before the answer,
/// which the server, rightly, leaves in the content.
#[test]
fn without_thinking_everything_is_the_answer() {
    let body = json!({
        "messages": [{"role": "user", "content": "What is 47 - 38?"}],
        "chat_template_kwargs": {"thinking": false},
    });
    let msg = &ok(&post(server(), "/v1/chat/completions", &body))["choices"][0]["message"];
    assert!(msg["reasoning_content"].is_null(), "{msg}");
    let content = msg["content"].as_str().expect("content");
    assert!(content.contains("47 - 38 = 9.") && content.ends_with("#### 9"), "{msg}");
}

/// What the model card reports: right answers of the engine on the 500 held-out problems.
const CARD_CORRECT: usize = 491;

/// `flashseek bench accuracy` on the held-out problems: the bar (95% on 1-3 digit
/// addition and subtraction) and the model card's overall figure, within two problems.
#[test]
fn holds_its_accuracy_on_the_held_out_problems() {
    let data = bundled::dir().join("heldout.jsonl");
    let base = format!("http://{}", server());
    let argv = [
        "bench",
        "--base-url",
        &base,
        "--chat",
        "--signed",
        "--data-path",
        data.to_str().expect("utf-8 path"),
        "--num-questions",
        "500",
        "--max-new-tokens",
        "1024",
    ];
    let report = run_accuracy(&AccuracyCli::parse_from(argv).args).expect("bench accuracy runs");
    assert_eq!((report.num_questions, report.failed, report.invalid), (500, 0, 0));
    for c in &report.categories {
        let digits = c.category.strip_prefix("add-").or_else(|| c.category.strip_prefix("sub-"));
        if matches!(digits, Some("1d" | "2d" | "3d")) {
            assert!(c.accuracy >= 0.95, "{}: {}/{}", c.category, c.correct, c.num_questions);
        }
    }
    assert!(report.correct + 2 >= CARD_CORRECT, "{} of 500 right; the model card says {CARD_CORRECT}", report.correct);
}
