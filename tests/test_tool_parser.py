"""Hermes/Qwen <tool_call> parsing into OpenAI tool_calls, and its never-raise error policy."""

from __future__ import annotations

import json

import pytest

from ajet.proxy.tool_parser import parse_tool_calls


def test_single_call_becomes_openai_tool_call():
    text = '<tool_call>\n{"name": "execute_python_code", "arguments": {"code": "print(1+1)"}}\n</tool_call>'
    parsed = parse_tool_calls(text)
    assert not parsed.format_error
    assert parsed.content is None
    assert len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]
    assert call["type"] == "function"
    assert call["id"].startswith("call_") and len(call["id"]) > len("call_")
    assert call["function"]["name"] == "execute_python_code"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"code": "print(1+1)"}


def test_text_around_calls_is_content_and_calls_keep_order():
    text = (
        "I will add, then multiply.\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "mul", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert not parsed.format_error
    assert parsed.content == "I will add, then multiply."
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["add", "mul"]
    assert json.loads(parsed.tool_calls[1]["function"]["arguments"]) == {"a": 3, "b": 4}
    assert parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]


def test_plain_text_has_no_calls_and_no_error():
    parsed = parse_tool_calls("The answer is \\boxed{4}.")
    assert parsed == parsed.__class__(content="The answer is \\boxed{4}.", tool_calls=[], format_error=False)


def test_arguments_given_as_json_string_are_decoded():
    text = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 5}"}</tool_call>'
    parsed = parse_tool_calls(text)
    assert not parsed.format_error
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"x": 5}


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}\n</tool_call>',  # bad JSON
        '<tool_call>\n{"arguments": {"x": 1}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}',  # unclosed
        'oops</tool_call>',  # stray close tag
        '<tool_call>\n["f", 1]\n</tool_call>',  # not an object
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        # one good block does not rescue a bad one: all-or-nothing
        '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": </tool_call>',
    ],
)
def test_malformed_blocks_come_back_as_content_with_flag(text):
    parsed = parse_tool_calls(text)
    assert parsed.format_error
    assert parsed.tool_calls == []
    assert parsed.content == text
