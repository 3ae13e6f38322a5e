"""Drives a running flashseek server with the official `openai` package, as a user would.

Usage: python test_client.py BASE_URL MODEL_NAME. Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.
"""

import sys
import traceback

import openai
from openai import OpenAI

BASE_URL, MODEL = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=120)
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def user(text):
    return [{"role": "user", "content": text}]


@check
def models_lists_the_served_model():
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL], ids


@check
def chat_non_streaming():
    r = client.chat.completions.create(model=MODEL, messages=user("Hello"), max_tokens=8, temperature=0)
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant", r
    assert c.finish_reason in ("length", "stop"), c.finish_reason
    assert r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@check
def chat_streaming_equals_non_streaming_with_usage_last():
    args = dict(model=MODEL, messages=user("Stream me"), max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**args).choices[0].message.content or ""
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    assert text == whole, (text, whole)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


@check
def thinking_mode_streams_reasoning_content():
    stream = client.chat.completions.create(
        model=MODEL, messages=user("Think"), max_tokens=12, temperature=0, stream=True,
        extra_body={"chat_template_kwargs": {"thinking": True}})
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in stream if ch.choices)
    assert reasoning, "no reasoning_content streamed in thinking mode"


@check
def tools_and_tool_results_are_accepted():
    tools = [{"type": "function", "function": {"name": "add", "description": "Adds",
              "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
    messages = user("What is 2+3?") + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "5"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=4)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")


@check
def seeded_n_choices_are_reproducible():
    args = dict(model=MODEL, messages=user("Pick"), max_tokens=6, temperature=1.0, seed=11, n=2)
    a = [c.message.content for c in client.chat.completions.create(**args).choices]
    b = [c.message.content for c in client.chat.completions.create(**args).choices]
    assert a == b and len(a) == 2, (a, b)


@check
def completions_text_and_stream():
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 6
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert text == r.choices[0].text, (text, r.choices[0].text)


@check
def bad_requests_raise_bad_request_error():
    for kwargs in (dict(temperature=-1), dict(max_tokens=10**9), dict(messages=[])):
        args = dict(model=MODEL, messages=user("x"), max_tokens=2)
        args.update(kwargs)
        try:
            client.chat.completions.create(**args)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.message, e
        else:
            raise AssertionError(f"{kwargs} was accepted")


@check
def unknown_model_raises_not_found():
    try:
        client.chat.completions.create(model="no-such-model", messages=user("x"), max_tokens=2)
    except openai.NotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("an unknown model was accepted")


passed = failed = 0
for fn in CHECKS:
    try:
        fn()
        passed += 1
        print(f"ok   {fn.__name__}")
    except Exception:
        failed += 1
        print(f"FAIL {fn.__name__}")
        traceback.print_exc()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
