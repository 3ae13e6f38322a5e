//! The `flashseek` binary: `logits` and `generate` on a fixture, and every kind of bad input
//! ending in a non-zero exit, nothing on stdout and one `error: ...` line on stderr.

mod common;
mod corrupt;

use std::path::Path;
use std::process::{Command, Output};

use corrupt::{ScratchDir, SINGLE};
use serde_json::json;

const VOCAB: usize = 2048;

fn flashseek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashseek"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("running flashseek {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn succeed(args: &[&str]) -> Output {
    let out = flashseek(args);
    assert!(out.status.success(), "flashseek {args:?} failed ({}): {}", out.status, text(&out.stderr));
    out
}

/// A failure reported as the CLI promises: non-zero exit, empty stdout, one line on stderr
/// starting with `error:` that contains every one of `names`. Returns that line.
fn fail(args: &[&str], names: &[&str]) -> String {
    let out = flashseek(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "flashseek {args:?} succeeded; stdout: {stdout}");
    assert!(out.status.code().is_some(), "flashseek {args:?} was killed ({}): {stderr}", out.status);
    assert!(stdout.is_empty(), "flashseek {args:?} wrote to stdout: {stdout}");
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        line.starts_with("error:") && !line.contains('\n'),
        "flashseek {args:?}: stderr is not one error line:\n{stderr}"
    );
    for n in names {
        assert!(line.contains(n), "flashseek {args:?}: error does not name `{n}`: {line}");
    }
    println!("{line}");
    line.to_string()
}

/// A usage error from clap: only a non-zero exit and an empty stdout are promised.
fn usage_error(args: &[&str]) {
    let out = flashseek(args);
    assert!(!out.status.success(), "flashseek {args:?} succeeded: {}", text(&out.stdout));
    assert!(out.status.code().is_some(), "flashseek {args:?} was killed ({})", out.status);
    assert!(out.stdout.is_empty(), "flashseek {args:?} wrote to stdout: {}", text(&out.stdout));
}

fn model() -> String {
    common::fixture("tiny-v32").display().to_string()
}

fn reference() -> std::collections::HashMap<String, common::Array> {
    common::read_safetensors(&common::fixture("tiny-v32").join("reference.safetensors"))
}

/// The first `n` tokens of the reference input, comma-separated.
fn ids(n: usize) -> String {
    let ids = reference()["input_ids"].ids();
    ids[..n].iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn argmax_rows(a: &common::Array) -> Vec<usize> {
    a.data.chunks(a.cols()).map(|r| r.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0).collect()
}

/// `flashseek logits` into a scratch file; returns its tensors.
fn logits(extra: &[&str], n: usize) -> std::collections::HashMap<String, common::Array> {
    let dir = ScratchDir::empty("cli-logits");
    let out = dir.join("out.safetensors");
    let (m, t, o) = (model(), ids(n), out.display().to_string());
    let mut args = vec!["logits", "--model-path", &m, "--token-ids", &t, "--out", &o];
    args.extend_from_slice(extra);
    let res = succeed(&args);
    assert!(res.stdout.is_empty(), "logits wrote to stdout: {}", text(&res.stdout));
    common::read_safetensors(&out)
}

// ---------------------------------------------------------------------------------------------
// Working commands

const N: usize = 20;

#[test]
fn logits_prefill_matches_the_reference() {
    let t = logits(&["--act-quant", "none"], N);
    let l = &t["logits"];
    assert_eq!(l.shape, vec![N, VOCAB]);
    assert_eq!(t.len(), 1, "unexpected tensors: {:?}", t.keys().collect::<Vec<_>>());
    // The reference is one causal prefill over 40 tokens: its first N rows are this prefix's.
    let want = reference()["logits"].rows(0, N);
    let got: Vec<f32> = l.data.iter().map(|&v| v as f32).collect();
    let r = common::assert_close("cli logits vs reference", &got, &want, VOCAB, 1e-3);
    println!("cli logits (act-quant none) vs reference: {r}");
}

#[test]
fn logits_decode_gives_the_same_argmax() {
    for quant in ["none", "fp8"] {
        let prefill = logits(&["--act-quant", quant], N);
        let decode = logits(&["--act-quant", quant, "--decode"], N);
        assert_eq!(decode["logits"].shape, vec![N, VOCAB]);
        assert_eq!(argmax_rows(&prefill["logits"]), argmax_rows(&decode["logits"]), "act-quant {quant}");
        let got: Vec<f32> = decode["logits"].data.iter().map(|&v| v as f32).collect();
        let r = common::compare(&got, &prefill["logits"].data, VOCAB);
        println!("--decode vs prefill, act-quant {quant}: {r}");
        assert!(r.max_rel() < 5e-2, "act-quant {quant}: {r}");
    }
}

#[test]
fn logits_hidden() {
    let t = logits(&["--hidden"], N);
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    assert_eq!(names, ["hidden.0", "hidden.1", "hidden.2", "hidden.3", "logits"]);
    for i in 0..4 {
        assert_eq!(t[&format!("hidden.{i}")].shape, vec![N, 256], "hidden.{i}");
    }
    assert_eq!(t["logits"].shape, vec![N, VOCAB]);
    // hidden.0 is the embedding output: the reference's, exactly (f32 weights).
    let want = reference()["hidden.0"].rows(0, N);
    let got: Vec<f32> = t["hidden.0"].data.iter().map(|&v| v as f32).collect();
    common::assert_close("hidden.0", &got, &want, 256, 1e-6);
}

#[test]
fn generate_prints_comma_separated_ids() {
    let r = reference();
    let prompt: Vec<String> = r["gen_prompt"].ids().iter().map(u32::to_string).collect();
    let m = model();
    let p = prompt.join(",");
    let out = succeed(&[
        "generate",
        "--model-path",
        &m,
        "--token-ids",
        &p,
        "--max-new-tokens",
        "5",
        "--ignore-eos",
        "--act-quant",
        "none",
    ]);
    let stdout = text(&out.stdout);
    let line = stdout.strip_suffix('\n').expect("stdout ends with a newline");
    assert!(!line.contains('\n'), "more than one line: {stdout:?}");
    let ids: Vec<u32> =
        line.split(',').map(|s| s.parse().unwrap_or_else(|e| panic!("{s:?} in {line:?}: {e}"))).collect();
    assert_eq!(ids.len(), 5, "{line}");
    assert!(ids.iter().all(|&i| (i as usize) < VOCAB));
    // Greedy f32 decoding reproduces the reference's continuation.
    let want: Vec<u32> = r["gen_tokens"].ids()[..5].to_vec();
    assert_eq!(ids, want);
}

#[test]
fn version() {
    let out = succeed(&["--version"]);
    let v = text(&out.stdout);
    assert!(v.starts_with("flashseek ") && v.contains(env!("CARGO_PKG_VERSION")), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Errors

fn logits_args<'a>(model: &'a str, ids: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["logits", "--model-path", model, "--token-ids", ids, "--out", out]
}

#[test]
fn nonexistent_model_path() {
    let dir = ScratchDir::empty("cli-no-model");
    let missing = dir.join("no-such-model").display().to_string();
    let out = dir.join("out.safetensors").display().to_string();
    fail(&logits_args(&missing, "1,2,3", &out), &[&missing]);
    fail(&["generate", "--model-path", &missing, "--token-ids", "1,2,3"], &[&missing]);
    assert!(!dir.join("out.safetensors").exists());
}

#[test]
fn token_id_outside_the_vocabulary() {
    let dir = ScratchDir::empty("cli-vocab");
    let (m, out) = (model(), dir.join("out.safetensors").display().to_string());
    fail(&logits_args(&m, "1,2048,3", &out), &["2048"]);
    fail(&logits_args(&m, "4294967295", &out), &["4294967295"]);
    fail(&["generate", "--model-path", &m, "--token-ids", "5,70000"], &["70000"]);
    assert!(!dir.join("out.safetensors").exists(), "an output file was written");
}

#[test]
fn bad_token_lists() {
    let dir = ScratchDir::empty("cli-tokens");
    let (m, out) = (model(), dir.join("out.safetensors").display().to_string());
    for bad in ["abc", "", "1,,2", "1;2", "-1", "1.5", "4294967296", " 1", "1,2,"] {
        usage_error(&logits_args(&m, bad, &out));
        usage_error(&["generate", "--model-path", &m, "--token-ids", bad]);
    }
    // No --token-ids at all.
    usage_error(&["logits", "--model-path", &m, "--out", &out]);
    assert!(!dir.join("out.safetensors").exists(), "an output file was written");
}

#[test]
fn bad_arguments() {
    let dir = ScratchDir::empty("cli-args");
    let (m, out) = (model(), dir.join("out.safetensors").display().to_string());
    let mut args = logits_args(&m, "1,2", &out);
    args.extend(["--act-quant", "fp16"]);
    usage_error(&args);
    usage_error(&["generate", "--model-path", &m, "--token-ids", "1", "--max-new-tokens", "-3"]);
    usage_error(&["generate", "--model-path", &m, "--token-ids", "1", "--max-new-tokens", "many"]);
    usage_error(&["serve", "--model-path", &m, "--port", "x"]);
    usage_error(&["serve", "--model-path", &m, "--reasoning-parser", "qwen3"]);
    usage_error(&["generate", "--model-path", &m, "--token-ids", "1", "--prompt", "hi"]);
    usage_error(&[]);
    usage_error(&["logits", "--model-path", &m, "--token-ids", "1"]);
}

/// `--kv-cache-dtype fp8_e4m3` and `bf16` run, close to the f32 cache; other values are errors
/// that name the accepted ones, from every command that loads a model.
#[test]
fn kv_cache_dtype() {
    let f32_cache = logits(&["--act-quant", "none"], N);
    for dtype in ["fp8_e4m3", "bf16"] {
        let packed = logits(&["--act-quant", "none", "--kv-cache-dtype", dtype], N);
        let got: Vec<f32> = packed["logits"].data.iter().map(|&v| v as f32).collect();
        let r = common::compare(&got, &f32_cache["logits"].data, VOCAB);
        println!("cli logits, {dtype} cache vs f32 cache: {r}");
        assert!(r.nonfinite_mismatch.is_empty() && r.cosine > 0.99, "{dtype}: {r}");
    }
    let explicit = logits(&["--act-quant", "none", "--kv-cache-dtype", "auto"], N);
    assert_eq!(explicit["logits"].data, f32_cache["logits"].data, "auto is the default");

    let m = model();
    for (value, says) in [("fp16", "unknown"), ("fp8_e5m2", "not supported yet"), ("FP8", "unknown")] {
        for cmd in [
            vec!["logits", "--model-path", &m, "--token-ids", "1,2", "--out", "/dev/null"],
            vec!["generate", "--model-path", &m, "--token-ids", "1,2"],
            vec!["serve", "--model-path", &m],
            vec!["bench", "offline", "--model-path", &m, "--num-prompts", "1"],
        ] {
            let mut args = cmd.clone();
            args.extend(["--kv-cache-dtype", value]);
            let out = flashseek(&args);
            let err = text(&out.stderr);
            assert!(!out.status.success() && out.stdout.is_empty(), "flashseek {args:?} succeeded");
            for name in ["--kv-cache-dtype", "auto", "bf16", "fp8_e4m3", says] {
                assert!(err.contains(name), "flashseek {args:?}: the error does not name `{name}`: {err}");
            }
        }
    }
}

/// `serve` refuses what it cannot do before it binds a port.
#[test]
fn serve_refuses_unsupported_setups() {
    let m = model();
    fail(&["serve", "--model-path", &m, "--tp", "2"], &["--tp", "not supported"]);
    fail(&["serve", "--model-path", &m, "--enable-dp-attention"], &["--enable-dp-attention"]);
    fail(&["serve", "--model-path", &m, "--port", "0", "--mem-fraction-static", "0"], &["--mem-fraction-static"]);
    let no_tokenizer = common::fixture("odd-v32-fp8").display().to_string();
    fail(&["serve", "--model-path", &no_tokenizer], &["tokenizer.json"]);
    fail(&["serve", "--model-path", &m, "--chat-template", "/no/such/template.jinja"], &["/no/such/template.jinja"]);
}

/// `--device cuda` on a binary built without the `cuda` feature: one error line saying how to
/// build one, from every command that loads a model, before any loading.
#[test]
#[cfg(not(feature = "cuda"))]
fn device_cuda_needs_a_cuda_build() {
    let m = model();
    let build = ["--device cuda", "--features cuda"];
    fail(&["serve", "--model-path", &m, "--device", "cuda"], &build);
    fail(&["logits", "--model-path", &m, "--token-ids", "1,2", "--out", "/dev/null", "--device", "cuda"], &build);
    fail(&["generate", "--model-path", &m, "--token-ids", "1,2", "--device", "cuda"], &build);
    fail(&["generate", "--model-path", &m, "--prompt", "hi", "--device", "cuda"], &build);
    fail(&["bench", "offline", "--model-path", &m, "--num-prompts", "1", "--device", "cuda"], &build);
}

#[test]
fn generate_text_prints_text() {
    let m = model();
    let plain =
        succeed(&["generate", "--model-path", &m, "--prompt", "Hello", "--max-new-tokens", "6", "--ignore-eos"]);
    let chat = succeed(&[
        "generate",
        "--model-path",
        &m,
        "--prompt",
        "Hello",
        "--chat",
        "--thinking",
        "--max-new-tokens",
        "6",
    ]);
    for out in [plain, chat] {
        assert!(text(&out.stdout).ends_with('\n'), "{}", text(&out.stdout));
        assert!(text(&out.stderr).contains("generated"), "{}", text(&out.stderr));
    }
}

#[test]
fn unwritable_out_path() {
    let dir = ScratchDir::empty("cli-out");
    let m = model();
    let missing_dir = dir.join("no-such-dir").join("out.safetensors").display().to_string();
    fail(&logits_args(&m, "1,2,3", &missing_dir), &[&missing_dir]);
    // A directory where the file should go.
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    let is_dir = dir.join("a-dir").display().to_string();
    fail(&logits_args(&m, "1,2,3", &is_dir), &[&is_dir]);
}

/// `{e:#}` prints an error's chain; an error that also prints its source in its own message
/// (flashseek's `Error::Io`, safetensors' `IoError`) makes the cause appear twice.
#[test]
fn errors_do_not_repeat_their_cause() {
    let dir = ScratchDir::empty("cli-repeat");
    let m = model();
    let missing = dir.join("no-such-model").display().to_string();
    let out = dir.join("out.safetensors").display().to_string();
    let bad_out = dir.join("no-such-dir").join("out.safetensors").display().to_string();
    let mut repeated = Vec::new();
    for line in [fail(&logits_args(&missing, "1,2,3", &out), &[]), fail(&logits_args(&m, "1,2,3", &bad_out), &[])] {
        let cause = "No such file or directory (os error 2)";
        if line.matches(cause).count() > 1 {
            repeated.push(line);
        }
    }
    assert!(repeated.is_empty(), "the cause is printed twice:\n{}", repeated.join("\n"));
}

#[test]
fn generate_past_the_context() {
    let m = model();
    fail(&["generate", "--model-path", &m, "--token-ids", "1,2", "--max-new-tokens", "1000000"], &["1000000"]);
}

#[test]
fn corrupted_checkpoints() {
    let out_dir = ScratchDir::empty("cli-corrupt-out");
    let out = out_dir.join("out.safetensors").display().to_string();

    // A truncated shard.
    let dir = ScratchDir::from_fixture("tiny-v32-fp8", "cli-truncated");
    let shard = "model-00002-of-00003.safetensors";
    let b = dir.read(shard);
    dir.write(shard, &b[..b.len() / 2]);
    let p = dir.path().display().to_string();
    fail(&logits_args(&p, "1,2,3", &out), &[&dir.join(shard).display().to_string()]);
    fail(&["generate", "--model-path", &p, "--token-ids", "1,2,3"], &[shard]);

    // A missing tensor.
    let dir = ScratchDir::from_fixture("tiny-v3", "cli-missing");
    let mut t = dir.tensors(SINGLE);
    t.remove("model.layers.2.self_attn.kv_b_proj.weight");
    dir.write_tensors(SINGLE, &t);
    let p = dir.path().display().to_string();
    fail(&logits_args(&p, "1,2,3", &out), &["model.layers.2.self_attn.kv_b_proj.weight"]);

    // A bad config.
    let dir = ScratchDir::from_fixture("tiny-v3", "cli-config");
    let mut v = dir.config();
    v["hidden_act"] = json!("gelu");
    dir.write_config(&v);
    let p = dir.path().display().to_string();
    fail(&logits_args(&p, "1,2,3", &out), &["config.json", "hidden_act", "gelu"]);

    assert!(!Path::new(&out).exists(), "an output file was written");
}

/// A config asking for 2^40 layers must fail on the first missing layer, not abort while
/// reserving room for all of them.
#[test]
fn huge_layer_count_is_an_error() {
    let dir = ScratchDir::from_fixture("tiny-v3", "cli-layers");
    let mut v = dir.config();
    v["num_hidden_layers"] = json!(1u64 << 40);
    dir.write_config(&v);
    let p = dir.path().display().to_string();
    fail(&["generate", "--model-path", &p, "--token-ids", "1,2,3"], &["num_hidden_layers"]);
}

/// Without --model-path, `generate` runs the bundled model; `--chat` thinks by default there
/// (its generation_config.json), and `--thinking false` turns it off (the prompt then ends in
/// `</think>`; the model answers with its working all the same, see its card).
#[test]
fn generate_chats_with_the_bundled_model() {
    let out = succeed(&["generate", "--chat", "--prompt", "What is 58 + 27?", "--max-new-tokens", "200"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("so far") && stdout.contains("</think>"), "{stdout}");
    assert!(stdout.trim_end().ends_with("#### 85"), "{stdout}");
    let out = succeed(&[
        "generate",
        "--chat",
        "--thinking",
        "false",
        "--prompt",
        "What is 58 + 27?",
        "--max-new-tokens",
        "200",
    ]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("58 + 27 = 85.") && stdout.trim_end().ends_with("#### 85"), "{stdout}");
}

#[test]
fn bad_default_chat_template_kwargs_are_usage_errors() {
    usage_error(&["serve", "--default-chat-template-kwargs", "thinking"]);
    usage_error(&["serve", "--default-chat-template-kwargs", "[true]"]);
    fail(&["serve", "--port", "0", "--default-chat-template-kwargs", r#"{"thinking": "yes"}"#], &["thinking"]);
}
