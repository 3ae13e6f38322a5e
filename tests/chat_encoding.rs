//! Prompt encoding: DeepSeek-V3.2's own format against its reference encoder, and Jinja chat
//! templates against Hugging Face transformers.

use std::path::{Path, PathBuf};

use flashseek::tokenizer::{ChatFormat, ChatMessage, ChatOptions, Role, Tool, ToolCall};
use flashseek::Error;
use serde_json::{json, Value};

const PY_TEMPLATE: &str = "{{ messages[0]['content'].strip().split(',') | tojson }}|\
{{ messages[0]['content'].startswith('  a') }}|{{ tools | tojson }}|\
{{ {'x': 1.5e-7, 'y': [1, 2.0]} | tojson(indent=2) }}";

// Produced by DeepSeek's encoding_dsv32.py (encode_messages, as vendored by vLLM in
// vllm/tokenizers/deepseek_v32_encoding.py) on the conversations built in each test below, the
// tools and response_format attached to the leading system message as SGLang's serving_chat does.
const DSV32_CHAT_MODE: &str = r##"<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜></think>"##;

const DSV32_THINKING_TOOLS: &str = r##"<｜begin▁of▁sentence｜>

## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}
</functions>
<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜><think>need weather</think>

<｜DSML｜function_calls>
<｜DSML｜invoke name="get_weather">
<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
<｜DSML｜parameter name="ratio" string="false">1.5</｜DSML｜parameter>
<｜DSML｜parameter name="big" string="false">1e+20</｜DSML｜parameter>
<｜DSML｜parameter name="tiny" string="false">1e-05</｜DSML｜parameter>
<｜DSML｜parameter name="whole" string="false">2.0</｜DSML｜parameter>
<｜DSML｜parameter name="ok" string="false">true</｜DSML｜parameter>
<｜DSML｜parameter name="none" string="false">null</｜DSML｜parameter>
<｜DSML｜parameter name="tags" string="false">["a", "b"]</｜DSML｜parameter>
<｜DSML｜parameter name="opt" string="false">{"unit": "C", "deep": [1, {"x": "<y>"}]}</｜DSML｜parameter>
<｜DSML｜parameter name="quote" string="true">say "hi"
</｜DSML｜parameter>
</｜DSML｜invoke>
</｜DSML｜function_calls><｜end▁of▁sentence｜>

<function_results>
<result>sunny</result>
</function_results>

<think>"##;

const DSV32_DEVELOPER_THINKING: &str = r##"<｜begin▁of▁sentence｜>Sys.<｜User｜>

# The user's message is: Answer in French.<｜Assistant｜><think>"##;

const DSV32_DEVELOPER_CHAT: &str = r##"<｜begin▁of▁sentence｜><｜User｜>

# The user's message is: Be brief.<｜Assistant｜></think><｜User｜>Why?<｜Assistant｜></think>"##;

const DSV32_RESPONSE_FORMAT: &str = r##"<｜begin▁of▁sentence｜>Sys.

## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}
</functions>


## Response Format:

You MUST strictly adhere to the following schema to reply:
{"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"temp": {"type": "number"}}}}}<｜User｜>Temp?<｜Assistant｜><think>"##;

// Produced by transformers 5.24 `render_jinja_template` (the Jinja environment behind
// `apply_chat_template(..., tokenize=False)`) with the chat_template of
// tests/fixtures/tokenizers/deepseek-v3/tokenizer_config.json. apply_chat_template itself drops
// `content: None`, which this template needs to render tool calls.
const V3_TOOLS: &str = r##"<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Weather in Paris and Rome?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜>
<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Rome"}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>
<｜tool▁output▁begin｜>rain<｜tool▁output▁end｜><｜tool▁outputs▁end｜>Paris is sunny, Rome rainy.<｜end▁of▁sentence｜><｜User｜>Thanks!<｜Assistant｜>"##;

const V3_NO_GEN: &str = r##"<｜begin▁of▁sentence｜>A

B<｜User｜>Hi"##;

// The same environment on PY_TEMPLATE: Python string methods, tojson, Python float printing.
const PY_METHODS: &str = r##"["a", "<b>"]|True|[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]|{
  "x": 1.5e-07,
  "y": [
    1,
    2.0
  ]
}"##;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn role(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => panic!("unknown role {other}"),
    }
}

/// An OpenAI chat message, as the server will read it.
fn message(v: &Value) -> ChatMessage {
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let tool_calls = v.get("tool_calls").and_then(Value::as_array).map_or_else(Vec::new, |calls| {
        calls
            .iter()
            .map(|c| ToolCall {
                id: c["id"].as_str().unwrap().to_string(),
                name: c["function"]["name"].as_str().unwrap().to_string(),
                arguments: c["function"]["arguments"].as_str().unwrap().to_string(),
            })
            .collect()
    });
    ChatMessage {
        role: role(v["role"].as_str().unwrap()),
        content: text("content").unwrap_or_default(),
        reasoning: text("reasoning_content"),
        tool_calls,
        tool_call_id: text("tool_call_id"),
        name: text("name"),
    }
}

fn messages(v: Value) -> Vec<ChatMessage> {
    v.as_array().unwrap().iter().map(message).collect()
}

fn tool(v: &Value) -> Tool {
    let f = &v["function"];
    Tool {
        name: f["name"].as_str().unwrap().to_string(),
        description: f.get("description").and_then(Value::as_str).map(str::to_string),
        parameters: f.get("parameters").cloned().unwrap_or(Value::Null),
    }
}

fn weather_tool() -> Tool {
    tool(&json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}}))
}

fn thinking() -> ChatOptions {
    ChatOptions { thinking: true, ..ChatOptions::default() }
}

fn dsv32(msgs: &[ChatMessage], opts: &ChatOptions) -> flashseek::Result<String> {
    ChatFormat::Dsv32.render(msgs, opts)
}

fn input_error(result: flashseek::Result<String>, needle: &str) {
    match result {
        Err(Error::Input(msg)) => assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}"),
        other => panic!("expected Error::Input mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn dsv32_reproduces_reference_test_output() {
    let input: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("dsv32-encoding/test_input.json")).unwrap()).unwrap();
    let expected = std::fs::read_to_string(fixture("dsv32-encoding/test_output.txt")).unwrap();
    let opts = ChatOptions { tools: input["tools"].as_array().unwrap().iter().map(tool).collect(), ..thinking() };
    let prompt = dsv32(&messages(input["messages"].clone()), &opts).unwrap();
    assert_eq!(prompt.trim(), expected.trim());
}

#[test]
fn dsv32_chat_mode_hides_reasoning_and_closes_every_think() {
    let msgs = messages(json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"},
        {"role": "user", "content": "Weather in Paris?"},
    ]));
    assert_eq!(dsv32(&msgs, &ChatOptions::default()).unwrap(), DSV32_CHAT_MODE);
}

#[test]
fn dsv32_thinking_drops_earlier_reasoning_and_writes_dsml_arguments() {
    let args = r#"{"city": "Paris", "days": 3, "ratio": 1.5, "big": 1e20, "tiny": 0.00001, "whole": 2.0, "ok": true, "none": null, "tags": ["a", "b"], "opt": {"unit": "C", "deep": [1, {"x": "<y>"}]}, "quote": "say \"hi\"\n"}"#;
    let msgs = messages(json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "OLD REASONING"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "need weather",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]));
    let opts = ChatOptions { tools: vec![weather_tool()], ..thinking() };
    let prompt = dsv32(&msgs, &opts).unwrap();
    assert_eq!(prompt, DSV32_THINKING_TOOLS);
    assert!(!prompt.contains("OLD REASONING"));
}

#[test]
fn dsv32_developer_role() {
    let last = messages(json!([
        {"role": "system", "content": "Sys."},
        {"role": "developer", "content": "Answer in French."},
    ]));
    assert_eq!(dsv32(&last, &thinking()).unwrap(), DSV32_DEVELOPER_THINKING);
    let first = messages(json!([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]));
    assert_eq!(dsv32(&first, &ChatOptions::default()).unwrap(), DSV32_DEVELOPER_CHAT);
}

#[test]
fn dsv32_response_format_follows_tools_in_system_prompt() {
    let msgs = messages(json!([
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "Temp?"},
    ]));
    let opts = ChatOptions {
        tools: vec![weather_tool()],
        response_format: Some(json!({"type": "json_schema", "json_schema": {"name": "answer",
            "schema": {"type": "object", "properties": {"temp": {"type": "number"}}}}})),
        ..thinking()
    };
    assert_eq!(dsv32(&msgs, &opts).unwrap(), DSV32_RESPONSE_FORMAT);
    let text = ChatOptions { response_format: Some(json!({"type": "text"})), ..thinking() };
    assert_eq!(dsv32(&msgs, &text).unwrap(), "<｜begin▁of▁sentence｜>Sys.<｜User｜>Temp?<｜Assistant｜><think>");
}

#[test]
fn dsv32_rejects_invalid_conversations() {
    let call = |args: &str| json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}});
    let cases = [
        (json!([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]), "must follow an assistant"),
        (json!([{"role": "tool", "content": "r"}]), "must follow an assistant"),
        (
            json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}]),
            "with 0 tool call",
        ),
        (
            json!([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("{}")]},
                   {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}]),
            "tool result 2",
        ),
        (
            json!([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("{oops")]}]),
            "not valid JSON",
        ),
        (json!([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("[1]")]}]), "JSON object"),
        (json!([{"role": "developer", "content": ""}]), "developer message needs content"),
    ];
    for (conversation, needle) in cases {
        input_error(dsv32(&messages(conversation), &ChatOptions::default()), needle);
    }
    let unreasoned = messages(json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]));
    input_error(dsv32(&unreasoned, &thinking()), "needs reasoning_content or tool_calls");
}

#[test]
fn select_prefers_override_then_tokenizer_template_then_model_type() {
    let dir = std::env::temp_dir().join(format!("flashseek-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("override.jinja");
    std::fs::write(&file, "override:{{ messages[0]['content'] }}").unwrap();
    let msgs = [ChatMessage::new(Role::User, "hi")];
    let opts = ChatOptions::default();

    let chosen = ChatFormat::select("deepseek_v32", Some("tokenizer"), Some(&file)).unwrap();
    assert_eq!(chosen.render(&msgs, &opts).unwrap(), "override:hi");
    let chosen = ChatFormat::select("deepseek_v32", Some("tokenizer"), None).unwrap();
    assert_eq!(chosen.render(&msgs, &opts).unwrap(), "tokenizer");
    assert!(matches!(ChatFormat::select("deepseek_v32", None, None).unwrap(), ChatFormat::Dsv32));

    assert!(matches!(ChatFormat::select("llama", None, None), Err(Error::Config { .. })));
    assert!(matches!(ChatFormat::select("deepseek_v32", Some("{% if %}"), None), Err(Error::Config { .. })));
    assert!(matches!(ChatFormat::select("deepseek_v32", None, Some(&dir.join("missing"))), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn v3_template() -> ChatFormat {
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizers/deepseek-v3/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    ChatFormat::select("deepseek_v3", config["chat_template"].as_str(), None).unwrap()
}

fn v3_options(add_generation_prompt: bool) -> ChatOptions {
    ChatOptions {
        add_generation_prompt,
        bos_token: "<｜begin▁of▁sentence｜>".into(),
        eos_token: "<｜end▁of▁sentence｜>".into(),
        ..ChatOptions::default()
    }
}

#[test]
fn jinja_deepseek_v3_template_matches_transformers() {
    let call = |id: &str, city: &str| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": format!("{{\"city\": \"{city}\"}}")}});
    let msgs = messages(json!([
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [call("c1", "Paris"), call("c2", "Rome")]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "Paris is sunny, Rome rainy."},
        {"role": "user", "content": "Thanks!"},
    ]));
    let template = v3_template();
    assert_eq!(template.render(&msgs, &v3_options(true)).unwrap(), V3_TOOLS);
    let systems = messages(json!([
        {"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "Hi"},
    ]));
    assert_eq!(template.render(&systems, &v3_options(false)).unwrap(), V3_NO_GEN);
}

#[test]
fn jinja_has_python_string_methods_and_tojson() {
    let format = ChatFormat::select("any", Some(PY_TEMPLATE), None).unwrap();
    let opts = ChatOptions {
        tools: vec![Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}) }],
        ..ChatOptions::default()
    };
    assert_eq!(format.render(&[ChatMessage::new(Role::User, "  a,<b>  ")], &opts).unwrap(), PY_METHODS);
}

#[test]
fn jinja_render_errors_are_input_errors() {
    let format = ChatFormat::select("any", Some("{{ raise_exception('no tools here') }}"), None).unwrap();
    input_error(format.render(&[], &ChatOptions::default()), "no tools here");
}

#[test]
fn formats_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatFormat>();
}
