"""Context tracking without HTTP: prefix merge, masks, truncation, splicing and the drift check."""

from __future__ import annotations

import logging

import pytest
from proxy_helpers import ADD_TOOL, tokenizer, tool_call_text

from ajet.proxy.tool_parser import parse_tool_calls
from ajet.tracker import EpisodeLimits, EpisodeTracker, LLMCall
from ajet.tracker.render import ChatRenderer, end_of_turn_id, normalize_messages
from ajet.tracker.samples import build_samples
from ajet.tracker.splice import plan_prompt


def _call(prompt, response, logprobs=None, versions=None, **kw) -> LLMCall:
    return LLMCall(
        prompt_ids=list(prompt),
        response_ids=list(response),
        response_logprobs=list(logprobs if logprobs is not None else [-0.5] * len(response)),
        response_versions=list(versions if versions is not None else [0] * len(response)),
        finish_reason=kw.pop("finish_reason", "stop"),
        **kw,
    )


# -- merging ids into samples (no tokenizer) ------------------------------------------------------


def test_prefix_extending_calls_merge_into_one_sample_with_exact_masks():
    c1 = _call([1, 2, 3], [10, 11], [-0.1, -0.2], [0, 0])
    c2 = _call([1, 2, 3, 10, 11, 4, 5], [12], [-0.3], [1])
    c3 = _call([1, 2, 3, 10, 11, 4, 5, 12, 6], [13, 14], [-0.4, -0.5], [1, 2])
    (s,) = build_samples([c1, c2, c3], task_id="t", episode_id="e")
    assert s.input_ids == [1, 2, 3, 10, 11, 4, 5, 12, 6, 13, 14]
    assert s.loss_mask == [0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert s.rollout_logprobs == [0.0, 0.0, 0.0, -0.1, -0.2, 0.0, 0.0, -0.3, 0.0, -0.4, -0.5]
    assert s.token_versions == [-1, -1, -1, 0, 0, -1, -1, 1, -1, 1, 2]
    assert (s.task_id, s.episode_id, s.truncated) == ("t", "e", False)
    assert s.metadata["prompt_length"] == 3 and s.metadata["num_calls"] == 3


def test_call_that_does_not_extend_starts_a_new_sample():
    c1 = _call([1, 2, 3], [10, 11])
    c2 = _call([1, 2, 9, 10, 11, 4], [12])  # history rewritten: not a prefix extension
    samples = build_samples([c1, c2], task_id="t", episode_id="e")
    assert [s.input_ids for s in samples] == [[1, 2, 3, 10, 11], [1, 2, 9, 10, 11, 4, 12]]
    assert samples[1].loss_mask == [0, 0, 0, 0, 0, 0, 1]  # its whole prompt is context, even old sampled ids


def test_n_choices_are_separate_branches_and_each_extends_only_itself():
    a = _call([1, 2], [10])
    b = _call([1, 2], [20, 21])
    a_next = _call([1, 2, 10, 5], [11])
    samples = build_samples([a, b, a_next], task_id="t", episode_id="e")
    assert [s.input_ids for s in samples] == [[1, 2, 10, 5, 11], [1, 2, 20, 21]]
    assert samples[0].loss_mask == [0, 0, 1, 0, 1]


def test_truncation_limits_cut_and_flag():
    c1 = _call([1, 2, 3, 4], [10, 11])
    c2 = _call([1, 2, 3, 4, 10, 11, 5, 6], [12, 13, 14])
    (resp_cut,) = build_samples([c1, c2], task_id="t", episode_id="e", max_response_tokens=5)
    assert resp_cut.truncated and resp_cut.input_ids == [1, 2, 3, 4, 10, 11, 5, 6, 12]
    assert resp_cut.loss_mask == [0, 0, 0, 0, 1, 1, 0, 0, 1]

    (prompt_cut,) = build_samples([c1, c2], task_id="t", episode_id="e", max_prompt_tokens=2)
    assert prompt_cut.truncated and prompt_cut.input_ids[:2] == [3, 4] and prompt_cut.metadata["prompt_length"] == 2
    assert len(prompt_cut.input_ids) == 11 - 2

    (total_cut,) = build_samples([c1, c2], task_id="t", episode_id="e", max_total_tokens=7)
    assert total_cut.truncated and total_cut.input_ids == [1, 2, 3, 4, 10, 11, 5]

    (fits,) = build_samples([c1, c2], task_id="t", episode_id="e", max_prompt_tokens=4, max_response_tokens=7, max_total_tokens=11)
    assert not fits.truncated and len(fits.input_ids) == 11


def test_tracker_samples_reads_limits_object():
    tracker = EpisodeTracker("ep", task_id="task-1")
    tracker.record(_call([1, 2, 3], [10, 11, 12]))
    (s,) = tracker.samples(EpisodeLimits(max_total_tokens=4))
    assert s.truncated and s.input_ids == [1, 2, 3, 10] and s.task_id == "task-1" and s.episode_id == "ep"


# -- splicing with the real tokenizer -------------------------------------------------------------


def _char_level_ids(tok, text: str) -> list[int]:
    """Same text as tok.encode(text), but one token per character: a tokenisation no template produces."""
    return [i for ch in text for i in tok.encode(ch, add_special_tokens=False)]


def _record_turn(tracker: EpisodeTracker, messages, response_ids, tools=None):
    """What the proxy does for one request: prepare the prompt, 'sample', parse, record."""
    tok = tracker.tokenizer
    msgs = normalize_messages(messages)
    plan = tracker.prepare_prompt(msgs, tools)
    parsed = parse_tool_calls(tok.decode(response_ids[:-1], skip_special_tokens=True))
    assistant = {"role": "assistant", "content": parsed.content}
    if parsed.tool_calls:
        assistant["tool_calls"] = parsed.tool_calls
    tracker.record(
        _call(plan.prompt_ids, response_ids, messages=msgs, tools=tools, assistant_message=assistant, spliced=plan.source is not None)
    )
    return plan, assistant


def test_splice_keeps_sampled_tokens_that_a_render_would_change():
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    messages = [{"role": "user", "content": "What is 1+2?"}]
    reply_text = tool_call_text("add", {"a": 1, "b": 2})
    sampled = _char_level_ids(tok, reply_text) + [end]
    assert sampled[:-1] != tok.encode(reply_text, add_special_tokens=False)  # really non-canonical

    plan1, assistant = _record_turn(tracker, messages, sampled, tools=[ADD_TOOL])
    call_id = assistant["tool_calls"][0]["id"]
    messages += [
        # what an agent sends back: arguments as the JSON string it got, content None
        {"role": "assistant", "content": None, "tool_calls": assistant["tool_calls"]},
        {"role": "tool", "tool_call_id": call_id, "content": "3"},
    ]
    plan2, _ = _record_turn(tracker, messages, tok.encode("It is 3.", add_special_tokens=False) + [end], tools=[ADD_TOOL])

    assert plan2.source == 0 and plan2.miss is None
    assert plan2.prompt_ids[: len(plan1.prompt_ids) + len(sampled)] == plan1.prompt_ids + sampled
    # The rest is exactly what the template adds after the assistant turn.
    renderer = ChatRenderer(tok)
    full = renderer.render_ids(normalize_messages(messages), [ADD_TOOL], add_generation_prompt=True)
    through = renderer.render_ids(normalize_messages(messages[:2]), [ADD_TOOL], add_generation_prompt=False)
    assert plan2.prompt_ids[len(plan1.prompt_ids) + len(sampled) :] == through[through.index(end, len(plan1.prompt_ids)) + 1 :] + full[len(through) :]

    (sample,) = tracker.samples()
    masked = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    assert masked == sampled + tracker.calls[1].response_ids
    assert tracker.metrics()["splices"] == 1 and tracker.metrics()["splice_misses"] == 0


def test_reply_cut_by_max_tokens_gets_end_token_from_template_as_context():
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    messages = normalize_messages([{"role": "user", "content": "Tell me a story."}])
    plan1 = tracker.prepare_prompt(messages, None)
    cut = tok.encode("Once upon a", add_special_tokens=False)  # finish_reason "length": no end token
    tracker.record(_call(plan1.prompt_ids, cut, messages=list(messages), assistant_message={"role": "assistant", "content": "Once upon a"}, finish_reason="length"))
    messages += normalize_messages([{"role": "assistant", "content": "Once upon a"}, {"role": "user", "content": "Go on."}])
    plan2 = tracker.prepare_prompt(messages, None)
    n = len(plan1.prompt_ids) + len(cut)
    assert plan2.source == 0 and plan2.prompt_ids[:n] == plan1.prompt_ids + cut and plan2.prompt_ids[n] == end
    assert tracker.metrics()["truncations"] == 1


def test_edited_assistant_message_is_not_spliced():
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    messages = [{"role": "user", "content": "Hi"}]
    _record_turn(tracker, messages, tok.encode("Hello there!", add_special_tokens=False) + [end])
    messages += [{"role": "assistant", "content": "Hello (edited by the agent)"}, {"role": "user", "content": "Bye"}]
    plan = tracker.prepare_prompt(normalize_messages(messages), None)
    assert plan.source is None
    assert plan.prompt_ids == ChatRenderer(tok).render_ids(normalize_messages(messages), None, add_generation_prompt=True)


class _TokenLevelRenderer(ChatRenderer):
    """Claims the end token does not cut text, so plan_prompt takes its token-level path."""

    def splits_at(self, token_id):
        return None


class _ShiftingRenderer(ChatRenderer):
    """A template whose render of a conversation is not a prefix of the render of a longer one."""

    def render_text(self, messages, tools, *, add_generation_prompt):
        text = super().render_text(messages, tools, add_generation_prompt=add_generation_prompt)
        return text + "x" if not add_generation_prompt else text


class _ShiftingTokenLevelRenderer(_ShiftingRenderer, _TokenLevelRenderer):
    pass


@pytest.mark.parametrize("renderer_cls", [_ShiftingRenderer, _ShiftingTokenLevelRenderer])
def test_render_that_does_not_line_up_falls_back_and_reports_a_miss(renderer_cls):
    tok = tokenizer()
    end = end_of_turn_id(tok)
    renderer = ChatRenderer(tok)
    messages = normalize_messages([{"role": "user", "content": "Hi"}])
    prompt = renderer.render_ids(messages, None, add_generation_prompt=True)
    first = _call(prompt, tok.encode("Hello", add_special_tokens=False) + [end], messages=messages, assistant_message={"role": "assistant", "content": "Hello"})
    follow = normalize_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    plan = plan_prompt([first], follow, None, renderer_cls(tok), end)
    assert plan.source is None and plan.miss == "render_not_prefix"
    assert plan.prompt_ids == renderer.render_ids(follow, None, add_generation_prompt=True)


def test_text_level_splice_gives_the_token_level_ids():
    """The fast path (encode only the text after the end token) equals the token-level rule."""
    tok = tokenizer()
    end = end_of_turn_id(tok)
    assert ChatRenderer(tok).splits_at(end) == "<|im_end|>"
    messages = [{"role": "system", "content": "You add."}, {"role": "user", "content": "What is 1+2+3?"}]
    calls = []
    for turn, reply in enumerate([tool_call_text("add", {"a": 1, "b": 2}, content=" Adding. "), tool_call_text("add", {"a": 3, "b": 3}), "It is 6.\n"]):
        msgs = normalize_messages(messages)
        fast = plan_prompt(calls, msgs, [ADD_TOOL], ChatRenderer(tok), end)
        slow = plan_prompt(calls, msgs, [ADD_TOOL], _TokenLevelRenderer(tok), end)
        assert fast == slow and (fast.source is not None) == (turn > 0)
        sampled = _char_level_ids(tok, reply) + [end]  # non-canonical ids: only splicing keeps them
        parsed = parse_tool_calls(reply)
        assistant = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            assistant["tool_calls"] = parsed.tool_calls
        calls.append(_call(fast.prompt_ids, sampled, messages=msgs, tools=[ADD_TOOL], assistant_message=assistant))
        messages.append(assistant)
        for tc in parsed.tool_calls:
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": "3\n"})
    assert calls[2].prompt_ids[: len(calls[1].prompt_ids)] == calls[1].prompt_ids


# -- drift check -----------------------------------------------------------------------------------


def test_drift_check_is_silent_on_a_clean_episode(caplog):
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    messages = [{"role": "user", "content": "What is 1+2?"}]
    _, assistant = _record_turn(tracker, messages, tok.encode(tool_call_text("add", {"a": 1, "b": 2}), add_special_tokens=False) + [end], tools=[ADD_TOOL])
    messages += [assistant, {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "3"}]
    _record_turn(tracker, messages, tok.encode("It is 3.", add_special_tokens=False) + [end], tools=[ADD_TOOL])
    with caplog.at_level(logging.INFO, logger="ajet.tracker"):
        report = tracker.drift_report()
    assert not report.drifted and report.position is None
    assert tracker.metrics()["drift"] == 0
    assert not caplog.records


def test_drift_check_fires_on_a_constructed_mismatch(caplog):
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    messages = [{"role": "user", "content": "Say something."}]
    text = "Absolutely wonderful weather today."
    plan, _ = _record_turn(tracker, messages, _char_level_ids(tok, text) + [end])
    canonical = tok.encode(text, add_special_tokens=False)
    first_diff = next(i for i, (a, b) in enumerate(zip(_char_level_ids(tok, text), canonical)) if a != b)

    with caplog.at_level(logging.INFO, logger="ajet.tracker"):
        report = tracker.drift_report()
        tracker.drift_report()  # logged once per episode, not per check
    assert report.drifted
    assert report.position == len(plan.prompt_ids) + first_diff
    assert report.tracked_window != report.rendered_window
    assert text[:5] in report.rendered_window
    assert tracker.metrics()["drift"] == 1
    assert len([r for r in caplog.records if "drift" in r.getMessage()]) == 1


def test_drift_check_uses_given_final_messages():
    tok = tokenizer()
    end = end_of_turn_id(tok)
    tracker = EpisodeTracker("ep", tok)
    _record_turn(tracker, [{"role": "user", "content": "Hi"}], tok.encode("Hello", add_special_tokens=False) + [end])
    assert not tracker.drift_report().drifted
    edited = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Goodbye"}]
    report = tracker.drift_report(final_messages=edited)
    assert report.drifted and "Goodbye" in report.rendered_window


@pytest.mark.parametrize("content", [[{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}], "Hi there"])
def test_content_parts_and_strings_normalise_to_the_same_message(content):
    assert normalize_messages([{"role": "user", "content": content, "name": "x"}]) == [{"role": "user", "content": "Hi there"}]
