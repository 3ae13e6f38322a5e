//! `ModelConfig::from_json` on damaged configs: every error names the file and the field, no
//! input panics, and the accepted spellings (hub `rope_scaling`, newer `rope_parameters`,
//! `eos_token_id` lists, `scale_fmt`) parse to what they mean.

use std::path::{Path, PathBuf};

use flashseek::model::config::{Fp8Config, ModelConfig, ModelType};
use proptest::prelude::*;
use serde_json::{json, Value};

const FIXTURES: [&str; 3] = ["tiny-v3", "tiny-v32", "tiny-v32-fp8"];

fn config_path(fixture: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture).join("config.json")
}

fn text(fixture: &str) -> String {
    let p = config_path(fixture);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn value(fixture: &str) -> Value {
    serde_json::from_str(&text(fixture)).expect("fixture config is JSON")
}

fn parse(v: &Value, path: &Path) -> flashseek::Result<ModelConfig> {
    ModelConfig::from_json(&serde_json::to_string_pretty(v).unwrap(), path)
}

/// Parses `text` as if it were `fixture`'s config and returns the error message; fails if it
/// parsed or if the message does not name the file and every one of `names`.
fn err_text(text: &str, fixture: &str, names: &[&str]) -> String {
    let path = config_path(fixture);
    let msg = match ModelConfig::from_json(text, &path) {
        Ok(c) => panic!("{fixture}: expected an error naming {names:?}, but it parsed: {c:?}"),
        Err(e) => e.to_string(),
    };
    let shown = path.display().to_string();
    assert!(msg.contains(&shown), "{fixture}: error does not name the file {shown}: {msg}");
    for n in names {
        assert!(msg.contains(n), "{fixture}: error does not name `{n}`: {msg}");
    }
    assert!(!msg.contains('\n'), "{fixture}: error spans several lines: {msg}");
    msg
}

fn err(v: &Value, fixture: &str, names: &[&str]) -> String {
    err_text(&serde_json::to_string_pretty(v).unwrap(), fixture, names)
}

/// `fixture`'s config with `edit` applied, expected to fail naming `names`.
fn expect_err(fixture: &str, names: &[&str], edit: impl FnOnce(&mut Value)) -> String {
    let mut v = value(fixture);
    edit(&mut v);
    err(&v, fixture, names)
}

/// The same edit on every fixture.
fn expect_err_all(names: &[&str], edit: impl Fn(&mut Value)) {
    for f in FIXTURES {
        expect_err(f, names, &edit);
    }
}

fn obj(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    v.as_object_mut().expect("config is an object")
}

fn ok(v: &Value, fixture: &str) -> ModelConfig {
    parse(v, &config_path(fixture)).unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Positive cases

#[test]
fn fixtures_parse() {
    for f in FIXTURES {
        let c = ModelConfig::from_file(&config_path(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(c.vocab_size, 2048);
        assert_eq!(c.hidden_size, 256);
        assert_eq!(c.num_layers, 3);
        assert_eq!(c.num_heads, 4);
        assert_eq!(c.q_lora_rank, Some(128));
        assert_eq!(c.kv_lora_rank, 128);
        assert_eq!((c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim), (128, 64, 128));
        assert_eq!(c.moe.n_routed_experts, 16);
        assert_eq!((c.moe.n_group, c.moe.topk_group, c.moe.experts_per_token), (4, 2, 4));
        assert_eq!(c.moe.n_shared_experts, 1);
        assert_eq!(c.moe.first_k_dense_replace, 1);
        assert_eq!(c.rope.theta, 10000.0);
        let y = c.rope.yarn.as_ref().expect("the fixtures use YaRN");
        assert_eq!((y.factor, y.original_max_position_embeddings), (40.0, 4096));
        assert_eq!(c.eos_token_ids, vec![1]);
        assert_eq!(c.bos_token_id, Some(0));
        match f {
            "tiny-v3" => {
                assert_eq!(c.model_type, ModelType::DeepseekV3);
                assert!(c.indexer.is_none() && c.fp8.is_none());
            }
            "tiny-v32" => {
                assert_eq!(c.model_type, ModelType::DeepseekV32);
                let ix = c.indexer.expect("indexer");
                assert_eq!((ix.n_heads, ix.head_dim, ix.topk), (8, 128, 16));
                assert!(c.fp8.is_none());
            }
            _ => {
                assert_eq!(c.model_type, ModelType::DeepseekV32);
                assert_eq!(c.fp8, Some(Fp8Config { ue8m0: true }));
            }
        }
    }
}

/// `transformers`' newer layout: `rope_parameters` holding `rope_theta`, `rope_type` and the
/// YaRN fields, no top-level `rope_theta` / `rope_scaling`.
fn to_rope_parameters(v: &mut Value) {
    let o = obj(v);
    let theta = o.remove("rope_theta").expect("rope_theta");
    let mut params = o.remove("rope_scaling").expect("rope_scaling");
    let p = params.as_object_mut().unwrap();
    let kind = p.remove("type").expect("type");
    p.insert("rope_type".into(), kind);
    p.insert("rope_theta".into(), theta);
    o.insert("rope_parameters".into(), params);
}

#[test]
fn rope_parameters_style_equals_hub_style() {
    for f in FIXTURES {
        let hub = ok(&value(f), f);
        let mut v = value(f);
        to_rope_parameters(&mut v);
        assert_eq!(v["rope_parameters"]["rope_type"], "yarn");
        assert_eq!(ok(&v, f), hub, "{f}");
    }
}

#[test]
fn rope_scaling_type_and_rope_type_keys_are_equivalent() {
    for f in FIXTURES {
        let hub = ok(&value(f), f);
        let mut v = value(f);
        let s = v["rope_scaling"].as_object_mut().unwrap();
        let t = s.remove("type").unwrap();
        s.insert("rope_type".into(), t);
        assert_eq!(ok(&v, f), hub, "{f}");
    }
}

/// `transformers` copies a legacy `type` into `rope_type` and keeps both, so a config re-saved
/// by it holds `"type": "yarn", "rope_type": "yarn"`: that is the same RoPE.
#[test]
fn rope_scaling_with_both_type_and_rope_type() {
    for f in FIXTURES {
        let hub = ok(&value(f), f);
        let mut v = value(f);
        v["rope_scaling"]["rope_type"] = json!("yarn");
        assert_eq!(ok(&v, f), hub, "{f}");
    }
}

#[test]
fn rope_scaling_null_is_plain_rope() {
    for f in FIXTURES {
        let hub = ok(&value(f), f);
        let mut v = value(f);
        v["rope_scaling"] = Value::Null;
        let c = ok(&v, f);
        assert_eq!(c.rope.theta, 10000.0);
        assert!(c.rope.yarn.is_none(), "{f}: rope_scaling null must mean no YaRN");
        // Only the RoPE differs.
        let mut expect = hub.clone();
        expect.rope.yarn = None;
        assert_eq!(c, expect);
        // No mscale without YaRN.
        assert_eq!(c.softmax_scale(), (c.qk_head_dim() as f32).powf(-0.5));
        // Absent is the same as null.
        obj(&mut v).remove("rope_scaling");
        assert_eq!(ok(&v, f), c);
    }
}

#[test]
fn rope_parameters_default_type_is_plain_rope() {
    let mut v = value("tiny-v32");
    let o = obj(&mut v);
    o.remove("rope_scaling");
    let theta = o.remove("rope_theta").unwrap();
    o.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": theta}));
    let c = ok(&v, "tiny-v32");
    assert!(c.rope.yarn.is_none());
    assert_eq!(c.rope.theta, 10000.0);
}

#[test]
fn eos_token_id_as_a_list() {
    for f in FIXTURES {
        let mut v = value(f);
        v["eos_token_id"] = json!([1, 2, 2047]);
        assert_eq!(ok(&v, f).eos_token_ids, vec![1, 2, 2047]);
        v["eos_token_id"] = json!([]);
        assert_eq!(ok(&v, f).eos_token_ids, Vec::<u32>::new());
        obj(&mut v).remove("eos_token_id");
        assert_eq!(ok(&v, f).eos_token_ids, Vec::<u32>::new());
    }
}

#[test]
fn scale_fmt_absent_or_ue8m0() {
    let mut v = value("tiny-v32-fp8");
    assert_eq!(ok(&v, "tiny-v32-fp8").fp8, Some(Fp8Config { ue8m0: true }));
    obj(&mut v["quantization_config"]).remove("scale_fmt");
    assert_eq!(ok(&v, "tiny-v32-fp8").fp8, Some(Fp8Config { ue8m0: false }));
    v["quantization_config"]["scale_fmt"] = Value::Null;
    assert_eq!(ok(&v, "tiny-v32-fp8").fp8, Some(Fp8Config { ue8m0: false }));
    obj(&mut v).remove("quantization_config");
    assert_eq!(ok(&v, "tiny-v32-fp8").fp8, None);
}

#[test]
fn unknown_fields_are_ignored() {
    for f in FIXTURES {
        let hub = ok(&value(f), f);
        let mut v = value(f);
        v["some_future_field"] = json!({"a": [1, 2, 3]});
        v["auto_map"] = json!({"AutoConfig": "x"});
        assert_eq!(ok(&v, f), hub);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad JSON

#[test]
fn bad_json() {
    for f in FIXTURES {
        let t = text(f);
        // Truncated at several points, including inside a nested object and mid-token.
        for cut in [0, 1, t.len() / 3, t.len() / 2, t.len() - 40, t.len() - 2] {
            err_text(&t[..cut], f, &[]);
        }
        // Not an object.
        for other in ["[]", "[1, 2]", "\"deepseek_v3\"", "42", "null", "true", "{}", ""] {
            err_text(other, f, &[]);
        }
        // Not JSON at all.
        err_text("model_type = \"deepseek_v3\"", f, &[]);
        err_text("\u{feff}{}", f, &[]);
    }
}

#[test]
fn trailing_garbage_after_the_object_is_rejected() {
    for f in FIXTURES {
        let t = text(f);
        err_text(&format!("{t}}}"), f, &[]);
        err_text(&format!("{t} x"), f, &[]);
        err_text(&format!("{t}{t}"), f, &[]);
    }
}

/// Cut inside a key, serde_path_to_error's path ends in an unknown segment, which the message
/// shows as "field `?`" / "field `rope_scaling.?`": a field that does not exist.
#[test]
fn truncated_json_names_no_placeholder_field() {
    let mut bad = Vec::new();
    for f in FIXTURES {
        let t = text(f);
        for cut in 0..t.len() {
            let msg = err_text(&t[..cut], f, &[]);
            if msg.contains("?`") {
                bad.push(format!("{f} cut at {cut}: {msg}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} messages name a placeholder field, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}

/// A config that is valid JSON but not an object should say that an object is expected, not
/// blame "field `[0]`" or name the parser's internal struct.
#[test]
fn not_an_object_says_an_object_is_expected() {
    let mut bad = Vec::new();
    for other in ["[]", "[1, 2]", "[\"deepseek_v3\"]", "\"deepseek_v3\"", "42", "null", "true"] {
        let msg = err_text(other, "tiny-v32", &[]);
        if !msg.contains("object") || msg.contains("RawConfig") || msg.contains("field `[") {
            bad.push(format!("{other}: {msg}"));
        }
    }
    assert!(bad.is_empty(), "unclear errors for a config that is not an object:\n{}", bad.join("\n"));
}

/// Wrong types are reported in the config's terms, not by the parser's internal type names
/// (`RawConfig`, `RawRope`, `RawQuant`, `OneOrMany`).
#[test]
fn wrong_type_messages_do_not_name_internal_types() {
    let mut bad = Vec::new();
    for (field, value) in [
        ("eos_token_id", json!(-1)),
        ("eos_token_id", json!([1, "2"])),
        ("rope_scaling", json!("yarn")),
        ("quantization_config", json!("fp8")),
    ] {
        let msg = expect_err("tiny-v32-fp8", &[field], |v| v[field] = value.clone());
        if ["RawConfig", "RawRope", "RawQuant", "OneOrMany"].iter().any(|t| msg.contains(t)) {
            bad.push(msg);
        }
    }
    assert!(bad.is_empty(), "errors name internal types:\n{}", bad.join("\n"));
}

#[test]
fn empty_object_names_a_missing_field() {
    err_text("{}", "tiny-v3", &["missing field"]);
}

// ---------------------------------------------------------------------------------------------
// model_type, missing fields, wrong types

#[test]
fn unknown_model_type() {
    for mt in ["llama", "deepseek_v2", "DeepSeek_V3", ""] {
        expect_err_all(&["model_type", mt], |v| v["model_type"] = json!(mt));
    }
    expect_err_all(&["model_type"], |v| v["model_type"] = json!(3));
    expect_err_all(&["model_type"], |v| v["model_type"] = Value::Null);
}

#[test]
fn missing_required_fields() {
    let required = [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "rope_theta",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "moe_intermediate_size",
        "routed_scaling_factor",
        "norm_topk_prob",
        "first_k_dense_replace",
    ];
    for field in required {
        expect_err_all(&[field], |v| {
            obj(v).remove(field);
        });
    }
    for field in ["index_topk", "index_head_dim", "index_n_heads", "q_lora_rank"] {
        for f in ["tiny-v32", "tiny-v32-fp8"] {
            expect_err(f, &[field], |v| {
                obj(v).remove(field);
            });
        }
    }
}

#[test]
fn missing_rope_theta_everywhere() {
    // Neither top level nor in rope_scaling / rope_parameters.
    for f in FIXTURES {
        let mut v = value(f);
        to_rope_parameters(&mut v);
        obj(&mut v["rope_parameters"]).remove("rope_theta");
        err(&v, f, &["rope_theta"]);
        let mut v = value(f);
        obj(&mut v).remove("rope_theta");
        v["rope_scaling"] = Value::Null;
        err(&v, f, &["rope_theta"]);
    }
}

#[test]
fn missing_yarn_fields() {
    for field in ["factor", "original_max_position_embeddings"] {
        expect_err_all(&["rope_scaling", field], |v| {
            obj(&mut v["rope_scaling"]).remove(field);
        });
        let mut v = value("tiny-v32");
        to_rope_parameters(&mut v);
        obj(&mut v["rope_parameters"]).remove(field);
        err(&v, "tiny-v32", &["rope_parameters", field]);
    }
}

#[test]
fn wrong_types() {
    let int_fields = [
        "hidden_size",
        "vocab_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_lora_rank",
        "q_lora_rank",
        "qk_rope_head_dim",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "max_position_embeddings",
        "first_k_dense_replace",
        "moe_layer_freq",
        "n_shared_experts",
        "num_key_value_heads",
        "num_nextn_predict_layers",
        "bos_token_id",
        "eos_token_id",
    ];
    for field in int_fields {
        for bad in [json!("256"), json!(-1), json!(256.5), json!(true), json!({"v": 1}), json!(1e30)] {
            expect_err_all(&[field], |v| v[field] = bad.clone());
        }
    }
    for field in ["index_topk", "index_head_dim", "index_n_heads"] {
        for bad in [json!("16"), json!(-16), json!(16.5)] {
            expect_err("tiny-v32", &[field], |v| v[field] = bad.clone());
        }
    }
    for field in ["rms_norm_eps", "routed_scaling_factor", "rope_theta"] {
        for bad in [json!("1e-6"), json!([1.0]), json!(false)] {
            expect_err_all(&[field], |v| v[field] = bad.clone());
        }
    }
    for field in ["norm_topk_prob", "tie_word_embeddings"] {
        expect_err_all(&[field], |v| v[field] = json!("true"));
    }
    for field in ["hidden_act", "topk_method", "scoring_func"] {
        expect_err_all(&[field], |v| v[field] = json!(1));
    }
    expect_err_all(&["rope_scaling"], |v| v["rope_scaling"] = json!("yarn"));
    expect_err_all(&["rope_scaling", "factor"], |v| v["rope_scaling"]["factor"] = json!("40"));
    expect_err("tiny-v32-fp8", &["quantization_config"], |v| v["quantization_config"] = json!("fp8"));
    expect_err("tiny-v32-fp8", &["quantization_config", "weight_block_size"], |v| {
        v["quantization_config"]["weight_block_size"] = json!(128)
    });
    expect_err_all(&["eos_token_id"], |v| v["eos_token_id"] = json!([1, "2"]));
}

#[test]
fn zero_where_positive_is_needed() {
    for field in [
        "hidden_size",
        "vocab_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_lora_rank",
        "q_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "moe_intermediate_size",
        "max_position_embeddings",
        "moe_layer_freq",
    ] {
        expect_err_all(&[field], |v| v[field] = json!(0));
    }
    for field in ["index_topk", "index_n_heads", "index_head_dim"] {
        expect_err("tiny-v32", &[field], |v| v[field] = json!(0));
    }
    expect_err_all(&["rope_theta"], |v| v["rope_theta"] = json!(0.0));
    expect_err_all(&["rope_theta"], |v| v["rope_theta"] = json!(-10000.0));
    expect_err_all(&["rope_scaling", "factor"], |v| v["rope_scaling"]["factor"] = json!(0.0));
    expect_err_all(&["rope_scaling", "factor"], |v| v["rope_scaling"]["factor"] = json!(-40.0));
    expect_err_all(&["rms_norm_eps"], |v| v["rms_norm_eps"] = json!(-1e-6));
    expect_err_all(&["qk_rope_head_dim"], |v| v["qk_rope_head_dim"] = json!(63));
}

// ---------------------------------------------------------------------------------------------
// Values the engine does not implement

#[test]
fn unsupported_activation_router_and_rope() {
    expect_err_all(&["hidden_act", "gelu"], |v| v["hidden_act"] = json!("gelu"));
    expect_err_all(&["scoring_func", "softmax"], |v| v["scoring_func"] = json!("softmax"));
    expect_err_all(&["topk_method", "greedy"], |v| v["topk_method"] = json!("greedy"));
    expect_err_all(&["rope_scaling", "linear"], |v| v["rope_scaling"]["type"] = json!("linear"));
    expect_err_all(&["rope_scaling", "dynamic"], |v| v["rope_scaling"]["type"] = json!("dynamic"));
    let mut v = value("tiny-v32");
    to_rope_parameters(&mut v);
    v["rope_parameters"]["rope_type"] = json!("linear");
    err(&v, "tiny-v32", &["rope_parameters", "rope_type", "linear"]);
}

#[test]
fn unsupported_quantization() {
    let f = "tiny-v32-fp8";
    let q = |field: &str, bad: Value| {
        let name = format!("quantization_config.{field}");
        expect_err(f, &[&name], |v| v["quantization_config"][field] = bad.clone());
    };
    q("quant_method", json!("awq"));
    q("quant_method", json!("gptq"));
    q("fmt", json!("e5m2"));
    q("weight_block_size", json!([64, 64]));
    q("weight_block_size", json!([128]));
    q("weight_block_size", json!([128, 128, 128]));
    q("weight_block_size", json!([]));
    q("scale_fmt", json!("e8m0x"));
    q("scale_fmt", json!("UE8M0"));
    q("activation_scheme", json!("static"));
    for field in ["quant_method", "weight_block_size"] {
        expect_err(f, &["quantization_config", field], |v| {
            obj(&mut v["quantization_config"]).remove(field);
        });
    }
    // A quantization_config on an f32 config is validated the same way.
    expect_err("tiny-v3", &["quantization_config.quant_method", "awq"], |v| {
        v["quantization_config"] = json!({"quant_method": "awq", "weight_block_size": [128, 128]})
    });
}

#[test]
fn inconsistent_moe() {
    // 16 experts in 3 groups.
    expect_err_all(&["n_group", "n_routed_experts"], |v| v["n_group"] = json!(3));
    // One expert per group cannot be ranked by its two best.
    expect_err_all(&["n_group"], |v| {
        v["n_group"] = json!(16);
        v["topk_group"] = json!(1);
        v["num_experts_per_tok"] = json!(1);
    });
    expect_err_all(&["topk_group"], |v| v["topk_group"] = json!(5));
    // topk_group 2 of 4 groups x 4 experts: at most 8.
    expect_err_all(&["num_experts_per_tok"], |v| v["num_experts_per_tok"] = json!(9));
    expect_err_all(&["num_experts_per_tok"], |v| v["num_experts_per_tok"] = json!(17));
    // The limit itself is fine.
    for f in FIXTURES {
        let mut v = value(f);
        v["num_experts_per_tok"] = json!(8);
        assert_eq!(ok(&v, f).moe.experts_per_token, 8);
    }
}

#[test]
fn inconsistent_attention() {
    for f in ["tiny-v32", "tiny-v32-fp8"] {
        for bad in [96, 100, 127, 129] {
            expect_err(f, &["index_head_dim", "power of two"], |v| v["index_head_dim"] = json!(bad));
        }
        // A power of two smaller than the rope part.
        expect_err(f, &["index_head_dim"], |v| v["index_head_dim"] = json!(32));
        expect_err(f, &["q_lora_rank"], |v| {
            obj(v).remove("q_lora_rank");
        });
        expect_err(f, &["q_lora_rank"], |v| v["q_lora_rank"] = Value::Null);
    }
    // V3 without q_lora_rank is a direct query projection.
    let mut v = value("tiny-v3");
    v["q_lora_rank"] = Value::Null;
    assert_eq!(ok(&v, "tiny-v3").q_lora_rank, None);
    for bad in [1, 8, 5] {
        expect_err_all(&["num_key_value_heads"], |v| v["num_key_value_heads"] = json!(bad));
    }
}

#[test]
fn eos_outside_vocab_names_the_field() {
    expect_err_all(&["eos_token_id"], |v| v["eos_token_id"] = json!(2048));
    expect_err_all(&["eos_token_id"], |v| v["eos_token_id"] = json!([1, 5000]));
}

#[test]
fn bos_outside_vocab_names_the_field() {
    expect_err_all(&["bos_token_id"], |v| v["bos_token_id"] = json!(2048));
}

#[test]
fn rms_norm_eps_beyond_f32_is_rejected() {
    // 1e39 does not fit an f32: it must not silently become +inf (every RMSNorm would give 0).
    expect_err_all(&["rms_norm_eps"], |v| v["rms_norm_eps"] = json!(1e39));
}

// ---------------------------------------------------------------------------------------------
// Every key of every fixture, deleted or replaced by odd scalars: an error names that key.

/// Paths of every object key: `["hidden_size"]`, `["rope_scaling", "factor"]`, ...
fn key_paths(v: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    if let Value::Object(o) = v {
        for (k, child) in o {
            out.push(vec![k.clone()]);
            if let Value::Object(_) = child {
                for mut p in key_paths(child) {
                    p.insert(0, k.clone());
                    out.push(p);
                }
            }
        }
    }
    out
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| &mut v[k.as_str()])
}

#[test]
fn every_key_deleted_or_replaced_names_itself() {
    let replacements = [
        Value::Null,
        json!(-1),
        json!(0),
        json!(1.5),
        json!("x"),
        json!(true),
        json!([]),
        json!({}),
        json!(1u64 << 40),
    ];
    let mut offenders = Vec::new();
    let mut errors = 0;
    for f in FIXTURES {
        let base = value(f);
        let path = config_path(f);
        for key in key_paths(&base) {
            let mut edits: Vec<(String, Value)> = Vec::new();
            let mut deleted = base.clone();
            let (last, parent) = key.split_last().unwrap();
            at(&mut deleted, parent).as_object_mut().unwrap().remove(last);
            edits.push(("deleted".into(), deleted));
            for r in &replacements {
                let mut v = base.clone();
                *at(&mut v, &key) = r.clone();
                edits.push((format!("= {r}"), v));
            }
            for (what, v) in edits {
                let res = std::panic::catch_unwind(|| parse(&v, &path));
                let res = match res {
                    Ok(r) => r,
                    Err(_) => {
                        offenders.push(format!("{f}: `{}` {what}: PANIC", key.join(".")));
                        continue;
                    }
                };
                if let Err(e) = res {
                    errors += 1;
                    let msg = e.to_string();
                    // `type` inside rope_scaling is reported as `rope_type`.
                    let names_key = key.iter().all(|k| msg.contains(k.as_str()));
                    if !msg.contains(&path.display().to_string()) || !names_key {
                        offenders.push(format!("{f}: `{}` {what}: {msg}", key.join(".")));
                    }
                }
            }
        }
    }
    assert!(errors > 100, "only {errors} edits failed: the edits are not reaching the parser");
    assert!(offenders.is_empty(), "{} errors do not name the edited key:\n{}", offenders.len(), offenders.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Property tests: no input panics; every error names the file.

const KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "factor",
    "original_max_position_embeddings",
    "hidden_act",
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "moe_intermediate_size",
    "routed_scaling_factor",
    "norm_topk_prob",
    "first_k_dense_replace",
    "moe_layer_freq",
    "topk_method",
    "scoring_func",
    "index_n_heads",
    "index_head_dim",
    "index_topk",
    "quantization_config",
    "quant_method",
    "fmt",
    "weight_block_size",
    "scale_fmt",
    "eos_token_id",
    "bos_token_id",
    "num_key_value_heads",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..300).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |x| serde_json::Number::from_f64(x).map(Value::Number)),
        (-1e3f64..1e3).prop_map(|x| json!(x)),
        prop::sample::select(vec![
            "deepseek_v3",
            "deepseek_v32",
            "yarn",
            "default",
            "linear",
            "silu",
            "noaux_tc",
            "sigmoid",
            "fp8",
            "e4m3",
            "ue8m0",
            "dynamic",
            "",
        ])
        .prop_map(|s| json!(s)),
        "[a-z_0-9]{0,10}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![prop::sample::select(KEYS).prop_map(String::from), "[a-z_]{1,8}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..12).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(prop::sample::Index),
    Replace(prop::sample::Index, Value),
    Insert(prop::sample::Index, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), prop_oneof![3 => scalar(), 1 => json_value()])
            .prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<prop::sample::Index>(), prop::sample::select(KEYS).prop_map(String::from), scalar())
            .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

/// Every value's path (object keys and array indices), the root excluded.
fn value_paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                prefix.push(json!(k));
                out.push(prefix.clone());
                value_paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(json!(i));
                out.push(prefix.clone());
                value_paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |cur, k| match k {
        Value::String(s) => &mut cur[s.as_str()],
        Value::Number(n) => &mut cur[n.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

fn apply(v: &mut Value, m: &Mutation) {
    let mut paths = Vec::new();
    value_paths(v, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        return;
    }
    let pick = |i: &prop::sample::Index| paths[i.index(paths.len())].clone();
    match m {
        Mutation::Delete(i) => {
            let p = pick(i);
            let (last, parent) = p.split_last().unwrap();
            match (node_mut(v, parent), last) {
                (Value::Object(o), Value::String(k)) => {
                    o.remove(k);
                }
                (Value::Array(a), Value::Number(n)) => {
                    a.remove(n.as_u64().unwrap() as usize);
                }
                _ => unreachable!(),
            }
        }
        Mutation::Replace(i, new) => *node_mut(v, &pick(i)) = new.clone(),
        Mutation::Insert(i, k, new) => {
            let p = pick(i);
            if let Value::Object(o) = node_mut(v, &p[..p.len() - 1]) {
                o.insert(k.clone(), new.clone());
            }
        }
    }
}

/// Parses `text` and checks the outcome: never a panic; an error names the file on one line.
fn check_no_panic(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("/models/some model/config.json");
    let res = std::panic::catch_unwind(|| ModelConfig::from_json(text, path));
    let res = res.map_err(|_| TestCaseError::fail(format!("from_json panicked on {text:?}")))?;
    if let Err(e) = res {
        let msg = e.to_string();
        prop_assert!(msg.contains("/models/some model/config.json"), "error does not name the file: {msg}");
        prop_assert!(!msg.contains('\n'), "multi-line error: {msg}");
    }
    Ok(())
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(proptest_config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_no_panic(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn truncated_fixtures_never_panic(f in 0..3usize, cut in any::<prop::sample::Index>()) {
        let t = text(FIXTURES[f]);
        check_no_panic(&t[..cut.index(t.len() + 1)])?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        check_no_panic(&v.to_string())?;
    }

    #[test]
    fn mutations_change_the_config(f in 0..3usize, m in mutation()) {
        let mut v = value(FIXTURES[f]);
        let before = v.clone();
        apply(&mut v, &m);
        if matches!(m, Mutation::Delete(_)) {
            prop_assert_ne!(v, before);
        }
    }

    #[test]
    fn mutated_fixtures_never_panic(f in 0..3usize, ms in prop::collection::vec(mutation(), 1..5)) {
        let mut v = value(FIXTURES[f]);
        for m in &ms {
            apply(&mut v, m);
        }
        check_no_panic(&v.to_string())?;
    }
}
