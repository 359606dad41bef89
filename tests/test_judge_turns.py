"""The judge sees every turn: the typed view of an episode's calls, how a judge's signature picks what
it gets, and judges that score tool use through the real runner, proxy and tracker (debug backbone;
the verl agent loop's case is in test_verl_backbone.py)."""

from __future__ import annotations

import json

import pytest
from proxy_helpers import ADD_TOOL, ANTHROPIC_ADD_TOOL, RESPONSES_ADD_TOOL, add_until_answer, tokenizer

from ajet import Workflow, WorkflowOutput
from ajet.engine.scripted import ScriptedEngine
from ajet.judge import BaseJudge, ToolCall, Turn, call_judge
from ajet.proxy import ProxyServer
from ajet.rollout import RolloutRunner
from ajet.schema import Task, WorkflowTask
from ajet.testing.config import make_config
from ajet.tracker import LLMCall
from ajet.tracker.turns import turns_from_calls

# -- the view -----------------------------------------------------------------------------------------


def _call(turn: int, **kw) -> LLMCall:
    base = dict(
        prompt_ids=[1, 2, 3, 4],
        response_ids=[5, 6],
        response_logprobs=[-0.1, -0.2],
        response_versions=[0, 0],
        finish_reason="stop",
        messages=[{"role": "user", "content": "add 1 and 2"}],
        tools=[ADD_TOOL],
        assistant_message={
            "role": "assistant",
            "content": "Adding.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
        },
        num_tool_calls=1,
        turn=turn,
    )
    base.update(kw)
    return LLMCall(**base)


def test_turns_copy_what_the_tracker_recorded():
    calls = [
        _call(0),
        _call(1, prompt_ids=list(range(9)), response_ids=[7, 8, 9], finish_reason="length",
              assistant_message={"role": "assistant", "content": "The answer is 3"}, num_tool_calls=0),
    ]
    first, second = turns_from_calls(calls)

    assert first == Turn(
        index=0,
        messages=({"role": "user", "content": "add 1 and 2"},),
        tools=(ADD_TOOL,),
        content="Adding.",
        tool_calls=(ToolCall(id="c1", name="add", arguments='{"a": 1, "b": 2}'),),
        prompt_tokens=4,
        completion_tokens=2,
        finish_reason="stop",
    )
    assert first.tool_calls[0].parsed_arguments() == {"a": 1, "b": 2}
    assert first.reply["tool_calls"][0]["function"]["name"] == "add"
    assert (second.index, second.prompt_tokens, second.completion_tokens, second.finish_reason) == (1, 9, 3, "length")
    assert second.tool_calls == () and second.content == "The answer is 3"

    # read-only: frozen, and edits to the nested copies do not reach the tracker's records
    with pytest.raises(AttributeError):
        first.content = "changed"  # type: ignore[misc]
    first.messages[0]["content"] = "changed"
    first.reply["content"] = "changed"
    assert calls[0].messages[0]["content"] == "add 1 and 2"
    assert first.content == "Adding."


def test_unparseable_arguments_parse_to_none():
    assert ToolCall("c", "f", "{not json").parsed_arguments() is None
    assert ToolCall("c", "f", "[1, 2]").parsed_arguments() is None


# -- which arguments a judge gets -----------------------------------------------------------------------

TURNS = turns_from_calls([_call(0), _call(1)])
TASK = WorkflowTask(task=Task(main_query="q", task_id="t"), episode_id="e")
OUTPUT = WorkflowOutput(metadata={"final_answer": "3"})


class Classic(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        return 1.0, workflow_output.metadata["final_answer"] == "3"


class ThirdPositional(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output, steps):  # any name in third place
        return float(len(steps)), True


class KeywordOnly(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output, *, turns=()):
        return float(sum(len(t.tool_calls) for t in turns)), True


class OneDictionary(BaseJudge):
    def compute_reward(self, judge_input_dictionary):
        d = judge_input_dictionary
        ok = d["final_answer"] == "3" and d["workflow_task"] is TASK and d["env"] is None
        return float(len(d["grouped_steps"])), ok


class TakesKwargs(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output, **kwargs):
        return float(len(kwargs)), True


@pytest.mark.parametrize(
    ("judge_cls", "expected"),
    [(Classic, (1.0, True)), (ThirdPositional, (2.0, True)), (KeywordOnly, (2.0, True)),
     (OneDictionary, (2.0, True)), (TakesKwargs, (0.0, True))],
)
def test_the_signature_decides_what_the_judge_receives(judge_cls, expected):
    assert call_judge(judge_cls(), TASK, OUTPUT, TURNS) == expected


def test_workflow_metadata_cannot_shadow_the_dictionarys_fixed_keys():
    output = WorkflowOutput(metadata={"final_answer": "3", "grouped_steps": "mine", "workflow_task": None})
    assert call_judge(OneDictionary(), TASK, output, TURNS) == (2.0, True)


# -- through the runner, proxy and tracker (what the debug backbone runs) -------------------------------


class AddUntilAnswer(Workflow):
    """Calls the `add` tool as long as the model asks for it, then hands the final answer to the judge
    through the older tuner API (`update_judge_input_dictionary`)."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        messages = list(workflow_task.task.init_messages)
        for _ in range(6):
            reply = await client.chat.completions.create(model="m", messages=messages, tools=[ADD_TOOL])
            message = reply.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                tuner.update_judge_input_dictionary(final_answer=message.content)
                return WorkflowOutput(reward=None)
            for call in message.tool_calls:
                args = json.loads(call.function.arguments)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
        return WorkflowOutput(reward=None)


class ToolCountJudge(BaseJudge):
    """Scores the number of tool calls the episode made (and records what it saw, for the test)."""

    seen: list[tuple[Turn, ...]] = []

    def compute_reward(self, workflow_task, workflow_output, turns):
        type(self).seen.append(turns)
        n = sum(len(t.tool_calls) for t in turns)
        return float(n), workflow_output.metadata.get("final_answer") == "The answer is 42."


class LegacyToolCountJudge(BaseJudge):
    async def compute_reward(self, judge_input_dictionary):
        steps = judge_input_dictionary["grouped_steps"]
        return float(sum(len(t.tool_calls) for t in steps)), judge_input_dictionary["final_answer"].endswith("42.")


@pytest.mark.parametrize("num_tool_turns", [0, 2])
@pytest.mark.parametrize("judge_cls", [ToolCountJudge, LegacyToolCountJudge])
async def test_a_judge_scores_the_tool_calls_of_each_turn(num_tool_turns, judge_cls):
    tok = tokenizer()
    engine = ScriptedEngine(tok, add_until_answer(num_tool_turns))
    proxy = ProxyServer(engine, tok)
    proxy.start()
    ToolCountJudge.seen = []
    try:
        runner = RolloutRunner(AddUntilAnswer, judge_cls(), proxy, make_config("rollout.max_env_worker=2"))
        result = await runner.run_episode(Task(main_query="Add until you reach 42.", task_id="t-add"))
    finally:
        proxy.stop()

    assert result.error is None and result.judge_error is None, result.error or result.judge_error
    assert result.reward == float(num_tool_turns)
    assert result.is_success is True  # the final answer arrived through update_judge_input_dictionary
    assert result.output.metadata["final_answer"] == "The answer is 42."
    if judge_cls is not ToolCountJudge:
        return
    (turns,) = ToolCountJudge.seen
    assert len(turns) == num_tool_turns + 1 == len(engine.requests)
    for i, (turn, request) in enumerate(zip(turns, engine.requests)):
        assert turn.index == i
        assert turn.prompt_tokens == len(request.prompt_ids)  # the prompt the engine saw, spliced
        assert turn.completion_tokens == len(request.completion.token_ids)
        assert turn.finish_reason == "stop"
        assert turn.tools == (ADD_TOOL,)
        assert turn.messages[0] == {"role": "user", "content": "Add until you reach 42."}
        assert len(turn.messages) == 1 + 2 * i  # user, then (assistant, tool) per earlier tool turn
    for i, turn in enumerate(turns[:-1]):
        (call,) = turn.tool_calls
        assert call.name == "add" and call.parsed_arguments() == {"a": i, "b": 2}
        assert turn.content == f"Step {i}."
    assert turns[-1].tool_calls == () and turns[-1].content == "The answer is 42."


# -- the same view whichever wire protocol the agent spoke ---------------------------------------------


class AddUntilAnswerOverResponses(Workflow):
    """AddUntilAnswer through the OpenAI Responses API (function_call / function_call_output items)."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        items: list[dict] = [{"role": "user", "content": workflow_task.task.main_query}]
        for _ in range(6):
            resp = await client.responses.create(model="m", input=items, tools=[RESPONSES_ADD_TOOL])
            items += [item.model_dump(exclude_none=True) for item in resp.output]
            calls = [o for o in resp.output if o.type == "function_call"]
            if not calls:
                tuner.update_judge_input_dictionary(final_answer=resp.output_text)
                return WorkflowOutput(reward=None)
            for call in calls:
                args = json.loads(call.arguments)
                items.append({"type": "function_call_output", "call_id": call.call_id, "output": str(args["a"] + args["b"])})
        return WorkflowOutput(reward=None)


class AddUntilAnswerOverMessages(Workflow):
    """AddUntilAnswer through the Anthropic Messages API (tool_use / tool_result blocks)."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_anthropic_sdk_client(max_retries=0)
        messages: list[dict] = [{"role": "user", "content": workflow_task.task.main_query}]
        for _ in range(6):
            msg = await client.messages.create(model="m", max_tokens=128, messages=messages, tools=[ANTHROPIC_ADD_TOOL])
            messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
            uses = [b for b in msg.content if b.type == "tool_use"]
            if not uses:
                tuner.update_judge_input_dictionary(final_answer="".join(b.text for b in msg.content if b.type == "text"))
                return WorkflowOutput(reward=None)
            results = [{"type": "tool_result", "tool_use_id": b.id, "content": str(b.input["a"] + b.input["b"])} for b in uses]
            messages.append({"role": "user", "content": results})
        return WorkflowOutput(reward=None)


@pytest.mark.network_loopback
@pytest.mark.parametrize("workflow_cls", [AddUntilAnswer, AddUntilAnswerOverResponses, AddUntilAnswerOverMessages])
async def test_turns_are_the_same_whichever_protocol_the_agent_spoke(workflow_cls):
    tok = tokenizer()
    engine = ScriptedEngine(tok, add_until_answer(2))
    proxy = ProxyServer(engine, tok)
    proxy.start()
    ToolCountJudge.seen = []
    try:
        runner = RolloutRunner(workflow_cls, ToolCountJudge(), proxy, make_config("rollout.max_env_worker=2"))
        result = await runner.run_episode(Task(main_query="Add until you reach 42.", task_id="t-add"))
    finally:
        proxy.stop()

    assert result.error is None and result.judge_error is None, result.error or result.judge_error
    assert (result.reward, result.is_success) == (2.0, True)
    (turns,) = ToolCountJudge.seen
    assert [t.content for t in turns] == ["Step 0.", "Step 1.", "The answer is 42."]
    assert [[(c.name, c.parsed_arguments()) for c in t.tool_calls] for t in turns] == [
        [("add", {"a": 0, "b": 2})], [("add", {"a": 1, "b": 2})], []]
    assert [t.tools for t in turns] == [(ADD_TOOL,)] * 3  # every protocol's tool shape, as the one OpenAI form
    for turn, request in zip(turns, engine.requests, strict=True):
        assert (turn.prompt_tokens, turn.completion_tokens) == (len(request.prompt_ids), len(request.completion.token_ids))
    # The last request's messages in OpenAI form: the tool results as `tool` messages answering the
    # earlier replies' tool-call ids, whatever blocks or items the agent sent them in.
    last = turns[-1].messages
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "assistant", "tool"]
    assert [m["content"] for m in last if m["role"] == "tool"] == ["2", "3"]
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"] == [
        turns[0].tool_calls[0].id, turns[1].tool_calls[0].id]
    assert [m["tool_calls"][0]["function"]["name"] for m in last if m["role"] == "assistant"] == ["add", "add"]
