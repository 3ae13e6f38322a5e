//! Output parsers: the reasoning splitter (`--reasoning-parser deepseek-r1|deepseek-v3`) and the
//! DSML tool-call parser (`--tool-call-parser deepseekv32`), one-shot and streaming.

use flashseek::tokenizer::{ParsedCall, ReasoningFormat, ReasoningParser, Split, ToolCallParser, ToolOutput};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

const BLOCK_START: &str = "<｜DSML｜function_calls>";
const BLOCK_END: &str = "</｜DSML｜function_calls>";

// ---------------------------------------------------------------------------------------------
// Helpers

fn reason_once(format: ReasoningFormat, thinking: bool, text: &str) -> Split {
    reason_chunks(format, thinking, &[text])
}

fn reason_chunks(format: ReasoningFormat, thinking: bool, chunks: &[&str]) -> Split {
    let mut parser = ReasoningParser::new(format, thinking);
    let mut total = Split::default();
    for chunk in chunks {
        append_split(&mut total, parser.push(chunk));
    }
    append_split(&mut total, parser.finish());
    total
}

fn append_split(total: &mut Split, part: Split) {
    total.reasoning.push_str(&part.reasoning);
    total.content.push_str(&part.content);
}

fn split(reasoning: &str, content: &str) -> Split {
    Split { reasoning: reasoning.into(), content: content.into() }
}

fn tools_once(text: &str) -> ToolOutput {
    tools_chunks(&[text])
}

fn tools_chunks(chunks: &[&str]) -> ToolOutput {
    let mut parser = ToolCallParser::new();
    let mut total = ToolOutput::default();
    for chunk in chunks {
        append_tools(&mut total, parser.push(chunk));
    }
    append_tools(&mut total, parser.finish());
    total
}

fn append_tools(total: &mut ToolOutput, part: ToolOutput) {
    total.content.push_str(&part.content);
    total.calls.extend(part.calls);
}

fn call(name: &str, arguments: &str) -> ParsedCall {
    ParsedCall { name: name.into(), arguments: arguments.into() }
}

fn block(invokes: &[&str]) -> String {
    format!("{BLOCK_START}\n{}\n{BLOCK_END}", invokes.join("\n"))
}

fn invoke(name: &str, params: &[(&str, bool, &str)]) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|(key, string, value)| {
            format!("<｜DSML｜parameter name=\"{key}\" string=\"{string}\">{value}</｜DSML｜parameter>")
        })
        .collect();
    format!("<｜DSML｜invoke name=\"{name}\">\n{}\n</｜DSML｜invoke>", params.join("\n"))
}

/// Cuts `text` at the given places (moved back to character boundaries).
fn cut<'a>(text: &'a str, places: &[Index]) -> Vec<&'a str> {
    let mut cuts: Vec<usize> = places
        .iter()
        .map(|place| {
            let mut at = place.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        })
        .collect();
    cuts.push(0);
    cuts.push(text.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|pair| &text[pair[0]..pair[1]]).collect()
}

/// SGLang's one-shot reading of reasoning: leading `<think>`s dropped, split at the first
/// `</think>`, no end means the output was cut off while reasoning.
fn reasoning_reference(text: &str, reasoning: bool) -> Split {
    if !reasoning {
        return split("", text);
    }
    let mut rest = text;
    while let Some(after) = rest.strip_prefix("<think>") {
        rest = after;
    }
    match rest.split_once("</think>") {
        Some((reasoning, content)) => split(reasoning, content),
        None => split(rest, ""),
    }
}

fn args(call: &ParsedCall) -> Value {
    serde_json::from_str(&call.arguments).expect("arguments are JSON")
}

// ---------------------------------------------------------------------------------------------
// Reasoning: formats

#[test]
fn format_names_parse_and_unknown_names_list_the_accepted_ones() {
    assert_eq!("deepseek-r1".parse::<ReasoningFormat>(), Ok(ReasoningFormat::DeepseekR1));
    assert_eq!("deepseek-v3".parse::<ReasoningFormat>(), Ok(ReasoningFormat::DeepseekV3));
    let err = "qwen3".parse::<ReasoningFormat>().unwrap_err();
    assert!(err.contains("qwen3") && err.contains("deepseek-r1") && err.contains("deepseek-v3"), "{err}");
    assert!("DeepSeek-R1 ".parse::<ReasoningFormat>().is_err());
}

#[test]
fn r1_starts_in_reasoning_whatever_the_thinking_flag() {
    for thinking in [false, true] {
        assert_eq!(
            reason_once(ReasoningFormat::DeepseekR1, thinking, "Let me think.</think>The answer is 42."),
            split("Let me think.", "The answer is 42.")
        );
    }
}

#[test]
fn v3_reasons_only_with_thinking_on() {
    let text = "<think>hmm</think>Hi";
    assert_eq!(reason_once(ReasoningFormat::DeepseekV3, true, text), split("hmm", "Hi"));
    assert_eq!(reason_once(ReasoningFormat::DeepseekV3, false, text), split("", text));
    assert_eq!(reason_once(ReasoningFormat::DeepseekV3, false, "a</think>b"), split("", "a</think>b"));
}

#[test]
fn leading_think_markers_are_dropped_even_repeated() {
    let r1 = ReasoningFormat::DeepseekR1;
    assert_eq!(reason_once(r1, true, "<think>a</think>b"), split("a", "b"));
    assert_eq!(reason_once(r1, true, "<think><think>a</think>b"), split("a", "b"));
    assert_eq!(reason_once(r1, true, "<think></think>b"), split("", "b"));
    // Only at the very start: later ones, or one after whitespace, are text.
    assert_eq!(reason_once(r1, true, "a<think>b</think>c"), split("a<think>b", "c"));
    assert_eq!(reason_once(r1, true, "\n<think>b</think>c"), split("\n<think>b", "c"));
}

#[test]
fn only_the_first_think_end_is_a_marker_and_content_is_verbatim() {
    let r1 = ReasoningFormat::DeepseekR1;
    assert_eq!(reason_once(r1, true, "a</think>\n\nb</think><think>c"), split("a", "\n\nb</think><think>c"));
}

#[test]
fn output_cut_off_while_reasoning_is_all_reasoning() {
    let r1 = ReasoningFormat::DeepseekR1;
    assert_eq!(reason_once(r1, true, "still thinking"), split("still thinking", ""));
    assert_eq!(reason_once(r1, true, "still thinking</thi"), split("still thinking</thi", ""));
    assert_eq!(reason_once(r1, true, "<thi"), split("<thi", ""));
    assert_eq!(reason_once(r1, true, ""), split("", ""));
}

#[test]
fn streaming_holds_back_only_a_possible_marker() {
    let mut parser = ReasoningParser::new(ReasoningFormat::DeepseekR1, true);
    assert_eq!(parser.push("<th"), split("", ""));
    assert_eq!(parser.push("ink>abc</"), split("abc", ""));
    assert_eq!(parser.push("b>"), split("</b>", ""));
    assert_eq!(parser.push("x</th"), split("x", ""));
    assert_eq!(parser.push("ink>"), split("", ""));
    assert_eq!(parser.push("answer <"), split("", "answer <"));
    assert_eq!(parser.finish(), split("", ""));
}

#[test]
fn streaming_in_cjk_and_emoji_never_splits_characters() {
    let text = "<think>想一想🤔</think>答案是四十二😀";
    let chunks: Vec<String> = text.chars().map(String::from).collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    assert_eq!(reason_chunks(ReasoningFormat::DeepseekV3, true, &chunks), split("想一想🤔", "答案是四十二😀"));
}

// ---------------------------------------------------------------------------------------------
// Tool calls: the grammar

#[test]
fn the_briefs_example_block() {
    let text = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n\
        <｜DSML｜parameter name=\"location\" string=\"true\">Hangzhou</｜DSML｜parameter>\n\
        <｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n\
        </｜DSML｜invoke>\n</｜DSML｜function_calls>";
    let out = tools_once(text);
    assert_eq!(out.content, "");
    assert_eq!(out.calls, vec![call("get_weather", r#"{"location":"Hangzhou","days":3}"#)]);
}

/// The last assistant turn of /work/shared/reference/dsv32-encoding/test_output.txt (DeepSeek's
/// `encoding_dsv32.py` rendering of test_input.json), as the model would generate it after the
/// `<think>` that ends a thinking prompt; the expected calls are that turn's `tool_calls` in
/// test_input.json.
#[test]
fn a_reference_transcript_turn_through_both_parsers() {
    let generated = "用户现在问后天的天气，后天是2024-01-17，我可以直接查询（因为已知今天日期）🗓️</think>\n\n\
        <｜DSML｜function_calls>\n\
        <｜DSML｜invoke name=\"get_weather\">\n\
        <｜DSML｜parameter name=\"location\" string=\"true\">Hangzhou</｜DSML｜parameter>\n\
        <｜DSML｜parameter name=\"date\" string=\"true\">2024-01-17</｜DSML｜parameter>\n\
        </｜DSML｜invoke>\n\
        <｜DSML｜invoke name=\"get_weather\">\n\
        <｜DSML｜parameter name=\"location\" string=\"true\">Beijing</｜DSML｜parameter>\n\
        <｜DSML｜parameter name=\"date\" string=\"true\">2024-01-17</｜DSML｜parameter>\n\
        </｜DSML｜invoke>\n\
        </｜DSML｜function_calls>";
    let reasoned = reason_once(ReasoningFormat::DeepseekV3, true, generated);
    assert_eq!(reasoned.reasoning, "用户现在问后天的天气，后天是2024-01-17，我可以直接查询（因为已知今天日期）🗓️");
    let out = tools_once(&reasoned.content);
    assert_eq!(out.content, "\n\n");
    assert_eq!(
        out.calls,
        vec![
            call("get_weather", r#"{"location":"Hangzhou","date":"2024-01-17"}"#),
            call("get_weather", r#"{"location":"Beijing","date":"2024-01-17"}"#),
        ]
    );
}

#[test]
fn text_around_blocks_is_content_and_several_blocks_each_give_calls() {
    let text = format!(
        "Let me check.\n\n{}\nDone? {}tail",
        block(&[&invoke("a", &[("x", false, "1")]), &invoke("b", &[])]),
        block(&[&invoke("c", &[("y", true, "z")])])
    );
    let out = tools_once(&text);
    assert_eq!(out.content, "Let me check.\n\n\nDone? tail");
    assert_eq!(out.calls, vec![call("a", r#"{"x":1}"#), call("b", "{}"), call("c", r#"{"y":"z"}"#)]);
}

#[test]
fn string_values_are_verbatim_with_markup_quotes_and_newlines() {
    let value = " <b>\"quoted\"</b>\n line 2 <｜DSML｜invoke name=\"no\"> </｜DSML｜invoke> 杭州😀\n";
    let out = tools_once(&block(&[&invoke("f", &[("v", true, value)])]));
    assert_eq!(out.content, "");
    assert_eq!(out.calls.len(), 1);
    assert_eq!(args(&out.calls[0]), json!({ "v": value }));
}

#[test]
fn non_string_values_are_json_and_invalid_json_stays_a_trimmed_string() {
    let out = tools_once(&block(&[&invoke(
        "f",
        &[
            ("n", false, " -2.5e3 "),
            ("b", false, "true"),
            ("z", false, "null"),
            ("a", false, "[1, \"two\", {\"three\": [3]}]"),
            ("o", false, "{\n  \"k\": \"v\"\n}"),
            ("bad", false, " not json, <really> "),
            ("half", false, "[1, 2"),
        ],
    )]));
    assert_eq!(
        args(&out.calls[0]),
        json!({
            "n": -2500.0, "b": true, "z": null, "a": [1, "two", {"three": [3]}], "o": {"k": "v"},
            "bad": "not json, <really>", "half": "[1, 2",
        })
    );
}

#[test]
fn an_empty_block_is_markup_without_calls() {
    assert_eq!(
        tools_once(&format!("a{BLOCK_START}\n \n{BLOCK_END}b")),
        ToolOutput { content: "ab".into(), calls: vec![] }
    );
}

#[test]
fn a_parameter_named_twice_keeps_the_last_value_in_the_first_place() {
    let out = tools_once(&block(&[&invoke("f", &[("a", false, "1"), ("b", true, "x"), ("a", false, "2")])]));
    assert_eq!(out.calls, vec![call("f", r#"{"a":2,"b":"x"}"#)]);
}

#[test]
fn arguments_keep_the_models_order() {
    let out = tools_once(&block(&[&invoke("f", &[("zeta", false, "1"), ("alpha", false, "2"), ("mid", false, "3")])]));
    assert_eq!(out.calls, vec![call("f", r#"{"zeta":1,"alpha":2,"mid":3}"#)]);
}

#[test]
fn whitespace_between_tags_is_free() {
    let tight = "<｜DSML｜function_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"a\" \
        string=\"true\">1</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜function_calls>";
    let loose = "<｜DSML｜function_calls>\n\n  <｜DSML｜invoke\n  name = \" f \"  >\n\t<｜DSML｜parameter  \
        name=\"a\"\nstring = \"true\" >1</｜DSML｜parameter>  \n\n</｜DSML｜invoke>\r\n \
        </｜DSML｜function_calls>";
    for text in [tight, loose] {
        assert_eq!(tools_once(text), ToolOutput { content: String::new(), calls: vec![call("f", r#"{"a":"1"}"#)] });
    }
}

#[test]
fn a_parameter_without_a_string_attribute_is_read_as_json() {
    let text = "<｜DSML｜function_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"a\">[1]\
        </｜DSML｜parameter><｜DSML｜parameter name=\"b\">hi</｜DSML｜parameter></｜DSML｜invoke>\
        </｜DSML｜function_calls>";
    assert_eq!(tools_once(text).calls, vec![call("f", r#"{"a":[1],"b":"hi"}"#)]);
}

#[test]
fn an_invoke_with_a_json_object_body_is_accepted() {
    let text = format!(
        "{BLOCK_START}\n<｜DSML｜invoke name=\"f\">\n{{\"city\": \"San Francisco\", \"n\": 2}}\n</｜DSML｜invoke>\n{BLOCK_END}"
    );
    let out = tools_once(&text);
    assert_eq!(out.content, "");
    assert_eq!(out.calls.len(), 1);
    assert_eq!(args(&out.calls[0]), json!({"city": "San Francisco", "n": 2}));
}

#[test]
fn an_unterminated_block_is_content_at_the_end() {
    let cut_off =
        format!("Sure.{BLOCK_START}\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"true\">x");
    assert_eq!(tools_once(&cut_off), ToolOutput { content: cut_off.clone(), calls: vec![] });

    // Calls that closed before the cut stay calls; only the unfinished rest is content.
    let after_one = format!("{BLOCK_START}\n{}\n<｜DSML｜invoke name=\"g\">", invoke("f", &[]));
    let out = tools_once(&after_one);
    assert_eq!(out.calls, vec![call("f", "{}")]);
    assert_eq!(out.content, "\n<｜DSML｜invoke name=\"g\">");

    assert_eq!(tools_once("text <｜DSML｜funct").content, "text <｜DSML｜funct");
}

#[test]
fn a_malformed_block_is_content_and_parsing_goes_on_after_it() {
    let malformed = format!("{BLOCK_START}\n<｜DSML｜invoke nome=\"f\">\n</｜DSML｜invoke>\n{BLOCK_END}");
    let good = block(&[&invoke("g", &[("a", false, "1")])]);
    let out = tools_once(&format!("{malformed} then {good}"));
    assert_eq!(out.content, format!("{malformed} then "));
    assert_eq!(out.calls, vec![call("g", r#"{"a":1}"#)]);

    for broken in [
        format!("{BLOCK_START}stray text{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invoke name=\"\"></｜DSML｜invoke>{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invoke name=\"f\">oops</｜DSML｜invoke>{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invoke name=\"f\">{{\"not\": \"closed\"</｜DSML｜invoke>{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invoke name=\"f\">[1, 2]</｜DSML｜invoke>{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invokename=\"f\"></｜DSML｜invoke>{BLOCK_END}"),
        format!("{BLOCK_START}<｜DSML｜invoke name=\"f\"><｜DSML｜parameter string=\"true\">1</｜DSML｜parameter></｜DSML｜invoke>{BLOCK_END}"),
    ] {
        assert_eq!(tools_once(&broken), ToolOutput { content: broken.clone(), calls: vec![] }, "{broken}");
    }
}

#[test]
fn a_tag_whose_quote_never_closes_is_given_up_after_a_bound() {
    let runaway = format!("{BLOCK_START}<｜DSML｜invoke name=\"{}", "杭州 runaway ".repeat(200));
    let mut parser = ToolCallParser::new();
    assert_eq!(parser.push(&runaway), ToolOutput { content: runaway.clone(), calls: vec![] });
    assert_eq!(parser.finish(), ToolOutput::default());
}

#[test]
fn streaming_passes_content_at_once_and_emits_each_call_when_it_closes() {
    let mut parser = ToolCallParser::new();
    assert_eq!(parser.push("Hello <｜DS").content, "Hello ");
    assert_eq!(parser.push("ML｜x").content, "<｜DSML｜x");
    let out = parser
        .push(&format!("{BLOCK_START}\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"false\">4"));
    assert_eq!(out, ToolOutput::default());
    assert_eq!(parser.push("2</｜DSML｜parameter>\n</｜DSML｜inv"), ToolOutput::default());
    assert_eq!(parser.push("oke>\n"), ToolOutput { content: String::new(), calls: vec![call("f", r#"{"a":42}"#)] });
    let out = parser.push(&format!("{}\n{BLOCK_END} bye", invoke("g", &[])));
    assert_eq!(out, ToolOutput { content: " bye".into(), calls: vec![call("g", "{}")] });
    assert_eq!(parser.finish(), ToolOutput::default());
}

#[test]
fn a_long_value_streamed_token_by_token_arrives_whole() {
    let value: String = "0123456789<>\"\n杭州".repeat(2000);
    let text = block(&[&invoke("write", &[("data", true, &value)])]);
    let mut parser = ToolCallParser::new();
    let mut total = ToolOutput::default();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(3) {
        append_tools(&mut total, parser.push(&piece.iter().collect::<String>()));
    }
    append_tools(&mut total, parser.finish());
    assert_eq!(total.content, "");
    assert_eq!(total.calls.len(), 1);
    assert_eq!(args(&total.calls[0]), json!({ "data": value }));
}

// ---------------------------------------------------------------------------------------------
// Properties: streaming equals one-shot, and nothing is lost

fn reasoning_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z <>/\\nkth思考😀]{0,8}",
        2 => Just("<think>".to_string()),
        2 => Just("</think>".to_string()),
        1 => prop::sample::select(vec!["<", "<t", "<thi", "<think", "</", "</th", "</think"]).prop_map(String::from),
    ]
}

fn reasoning_case() -> impl Strategy<Value = (String, Vec<Index>)> {
    (prop::collection::vec(reasoning_fragment(), 0..10), prop::collection::vec(any::<Index>(), 0..10))
        .prop_map(|(fragments, cuts)| (fragments.concat(), cuts))
}

proptest! {
    #[test]
    fn reasoning_streaming_equals_one_shot_equals_the_reference(
        (text, cuts) in reasoning_case(),
        format in prop::sample::select(vec![ReasoningFormat::DeepseekR1, ReasoningFormat::DeepseekV3]),
        thinking in any::<bool>(),
    ) {
        let once = reason_once(format, thinking, &text);
        prop_assert_eq!(&reason_chunks(format, thinking, &cut(&text, &cuts)), &once);
        let reasoning = format == ReasoningFormat::DeepseekR1 || thinking;
        prop_assert_eq!(once, reasoning_reference(&text, reasoning));
    }
}

/// A generated parameter: the DSML that writes it and the JSON value it must come back as.
#[derive(Debug, Clone)]
struct GenParam {
    key: String,
    dsml: String,
    value: Value,
}

fn param_value() -> impl Strategy<Value = (bool, String, Value)> {
    let json_value = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(any::<i32>(), 0..4).prop_map(Value::from),
        "[a-z杭😀\"<]{0,5}".prop_map(|s| json!({ "k": s, "n": [1, {"m": null}] })),
    ];
    prop_oneof![
        "[a-z <>/\"\\n杭州😀｜]{0,12}".prop_map(|s| (true, s.clone(), Value::String(s))),
        Just((true, "a </｜DSML｜invoke> b".to_string(), json!("a </｜DSML｜invoke> b"))),
        json_value.prop_map(|v| (false, v.to_string(), v)),
        "[a-z<>]{1,6}".prop_map(|s| (false, format!(" x-{s}\n"), Value::String(format!("x-{s}")))),
    ]
}

fn gen_param() -> impl Strategy<Value = GenParam> {
    (prop::sample::select(vec!["a", "b", "city", "日期"]), param_value(), "[ \\n]{0,2}").prop_map(
        |(key, (string, raw, value), ws)| GenParam {
            key: key.to_string(),
            dsml: format!("{ws}<｜DSML｜parameter name=\"{key}\" string=\"{string}\">{raw}</｜DSML｜parameter>"),
            value,
        },
    )
}

/// A generated block and the calls it holds, arguments merged last-wins.
fn gen_block() -> impl Strategy<Value = (String, Vec<(String, Value)>)> {
    let gen_invoke = ("[a-z_][a-z0-9_.-]{0,8}", prop::collection::vec(gen_param(), 0..4), "[ \\n]{0,3}");
    prop::collection::vec(gen_invoke, 1..4).prop_map(|invokes| {
        let mut text = BLOCK_START.to_string();
        let mut calls = Vec::new();
        for (name, params, ws) in invokes {
            text.push_str(&format!("{ws}<｜DSML｜invoke name=\"{name}\">"));
            let mut expected = serde_json::Map::new();
            for param in params {
                text.push_str(&param.dsml);
                expected.insert(param.key, param.value);
            }
            text.push_str(&format!("{ws}</｜DSML｜invoke>"));
            calls.push((name, Value::Object(expected)));
        }
        text.push('\n');
        text.push_str(BLOCK_END);
        (text, calls)
    })
}

#[derive(Debug, Clone)]
enum Fragment {
    Plain(String),
    Block(String, Vec<(String, Value)>),
}

fn tool_fragment() -> impl Strategy<Value = Fragment> {
    let partial = (1..BLOCK_START.chars().count()).prop_map(|n| {
        let prefix: String = BLOCK_START.chars().take(n).collect();
        Fragment::Plain(format!("{prefix}~"))
    });
    prop_oneof![
        3 => "[a-z <>/\"\\n杭州😀｜]{0,10}".prop_map(Fragment::Plain),
        1 => partial,
        2 => gen_block().prop_map(|(text, calls)| Fragment::Block(text, calls)),
    ]
}

fn tool_case() -> impl Strategy<Value = (Vec<Fragment>, Vec<Index>)> {
    (prop::collection::vec(tool_fragment(), 0..6), prop::collection::vec(any::<Index>(), 0..12))
}

fn dsml_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        BLOCK_START,
        BLOCK_END,
        "<｜DSML｜invoke",
        "<｜DSML｜invoke name=\"f\">",
        "<｜DSML｜parameter name=\"a\" string=\"true\">",
        "<｜DSML｜parameter name=\"b\" string=\"false\">",
        "</｜DSML｜invoke>",
        "<｜DSML｜parameter",
        "</｜DSML｜parameter>",
        " name=\"f\"",
        " name=\"a\"",
        " string=\"true\"",
        " string=\"false\"",
        ">",
        "\"",
        "\n",
        " ",
        "x",
        "1",
        "{",
        "}",
        "<｜DSML｜",
        "</",
        "杭😀",
    ])
}

fn fragments_text(fragments: Vec<Fragment>) -> String {
    fragments
        .into_iter()
        .map(|fragment| match fragment {
            Fragment::Plain(s) | Fragment::Block(s, _) => s,
        })
        .collect()
}

/// Valid text broken in a few places: a piece inserted or a stretch deleted.
fn broken_blocks() -> impl Strategy<Value = String> {
    let edit = (any::<Index>(), any::<Index>(), prop::option::of(dsml_piece()));
    (prop::collection::vec(tool_fragment(), 1..4), prop::collection::vec(edit, 1..4)).prop_map(|(fragments, edits)| {
        let mut text = fragments_text(fragments);
        for (at, len, piece) in edits {
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let start = bounds[at.index(bounds.len())];
            match piece {
                Some(piece) => text.insert_str(start, piece),
                None => {
                    let end = bounds[at.index(bounds.len()).saturating_add(len.index(8)).min(bounds.len() - 1)];
                    text.replace_range(start..end, "");
                }
            }
        }
        text
    })
}

/// DSML that is mostly malformed: random pieces, or valid blocks with a few edits.
fn dsml_soup() -> impl Strategy<Value = String> {
    prop_oneof![prop::collection::vec(dsml_piece(), 0..30).prop_map(|pieces| pieces.concat()), broken_blocks()]
}

proptest! {
    #[test]
    fn tool_calls_streaming_equals_one_shot_and_keeps_everything((fragments, cuts) in tool_case()) {
        let mut text = String::new();
        let mut content = String::new();
        let mut calls = Vec::new();
        for fragment in fragments {
            match fragment {
                Fragment::Plain(plain) => {
                    text.push_str(&plain);
                    content.push_str(&plain);
                }
                Fragment::Block(block, block_calls) => {
                    text.push_str(&block);
                    calls.extend(block_calls);
                }
            }
        }
        let once = tools_once(&text);
        prop_assert_eq!(&tools_chunks(&cut(&text, &cuts)), &once);
        prop_assert_eq!(&once.content, &content);
        let got: Vec<(String, Value)> = once.calls.iter().map(|c| (c.name.clone(), args(c))).collect();
        prop_assert_eq!(got, calls);
    }

    #[test]
    fn malformed_dsml_streams_like_one_shot_and_is_never_lost(text in dsml_soup(), cuts in prop::collection::vec(any::<Index>(), 0..12)) {
        let once = tools_once(&text);
        prop_assert_eq!(&tools_chunks(&cut(&text, &cuts)), &once);
        for c in &once.calls {
            prop_assert!(args(c).is_object());
        }
        // Without a call or a closed block nothing in the text was markup.
        if once.calls.is_empty() && !text.contains(BLOCK_END) {
            prop_assert_eq!(&once.content, &text);
        }
    }

    #[test]
    fn reasoning_then_tools_streams_like_one_shot(
        (fragments, cuts) in tool_case(),
        thinking in "[a-z思😀<>/]{0,10}",
    ) {
        let text = format!("<think>{thinking}</think>{}", fragments_text(fragments));
        let once_reasoning = reason_once(ReasoningFormat::DeepseekR1, true, &text);
        let once_tools = tools_once(&once_reasoning.content);
        let mut reasoning = ReasoningParser::new(ReasoningFormat::DeepseekR1, true);
        let mut tools = ToolCallParser::new();
        let mut split_total = Split::default();
        let mut tools_total = ToolOutput::default();
        for chunk in cut(&text, &cuts) {
            let part = reasoning.push(chunk);
            append_tools(&mut tools_total, tools.push(&part.content));
            append_split(&mut split_total, part);
        }
        let part = reasoning.finish();
        append_tools(&mut tools_total, tools.push(&part.content));
        append_tools(&mut tools_total, tools.finish());
        append_split(&mut split_total, part);
        prop_assert_eq!(split_total, once_reasoning);
        prop_assert_eq!(tools_total, once_tools);
    }
}
