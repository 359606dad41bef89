"""The math judge: extraction rules on real GSM8K references, normalisation, equivalence, shaping, LLM fallback."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ajet.config import AjetConfig
from ajet.judge.math import (
    MathAnswerAndLlmAsJudge,
    MathAnswerAsJudge,
    answers_match,
    extract_answer,
    last_boxed,
    normalize_answer,
    reference_answer,
)
from ajet.schema import Task, WorkflowOutput, WorkflowTask
from ajet.testing.config import make_config


def _gsm8k_rows(gsm8k_dir: Path, n: int | None = None) -> list[dict]:
    rows = []
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if n is not None and len(rows) >= n:
                break
    return rows


def _ref(row: dict) -> str:
    return row["answer"].split("####")[-1].strip().replace(",", "")


@pytest.fixture(scope="module")
def gsm8k_sample(gsm8k_dir: Path) -> list[dict]:
    """All test rows with a comma or minus in the reference, plus the first 200 ordinary ones."""
    rows = _gsm8k_rows(gsm8k_dir)
    special = [r for r in rows if "," in r["answer"].split("####")[-1] or _ref(r).startswith("-")]
    assert len(special) >= 10  # 14 comma references and 2 negative ones in the test split
    return rows[:200] + special


def _task(row: dict, with_reference: bool = True) -> WorkflowTask:
    metadata = dict(row)
    if with_reference:
        metadata["reference_answer"] = _ref(row)
    return WorkflowTask(Task(main_query=row["question"], metadata=metadata, task_id="t"))


# --- extraction rules, each against real references --------------------------------------------------


def test_reference_solution_itself_extracts_its_hashes_answer(gsm8k_sample):
    for row in gsm8k_sample:
        extraction = extract_answer(row["answer"])
        assert extraction.method == "hashes"
        assert answers_match(extraction.answer, _ref(row)), row["answer"]


def test_boxed_answer_after_reasoning_with_other_numbers(gsm8k_sample):
    for row in gsm8k_sample:
        reasoning = row["answer"].split("####")[0]  # full of intermediate numbers
        reply = f"{reasoning}\nSo the result is \\boxed{{{_ref(row)}}} and I double-checked 12 + 7."
        extraction = extract_answer(reply)
        assert extraction.method == "boxed"
        assert answers_match(extraction.answer, _ref(row))


def test_answer_phrase_with_currency_commas_and_units(gsm8k_sample):
    for row in gsm8k_sample:
        value = int(_ref(row))
        reply = f"Let me think. 3 + 4 = 7.\nThe answer is ${value:,} dollars. Checked 5 times"
        extraction = extract_answer(reply)
        assert extraction.method == "answer_phrase"
        assert answers_match(extraction.answer, _ref(row)), (reply, extraction)


def test_final_answer_colon_with_trailing_zero_decimal(gsm8k_sample):
    for row in gsm8k_sample:
        reply = f"Computing...\nFinal answer: {_ref(row)}.0\n(done in 2 steps)"
        extraction = extract_answer(reply)
        assert extraction.method == "answer_phrase"
        assert answers_match(extraction.answer, _ref(row))


def test_last_number_fallback(gsm8k_sample):
    for row in gsm8k_sample:
        reply = f"First 2 things, then 3 more. In total she gets {_ref(row)}"
        extraction = extract_answer(reply)
        assert extraction.method == "last_number"
        assert answers_match(extraction.answer, _ref(row))


def test_wrong_answers_are_rejected(gsm8k_sample):
    for row in gsm8k_sample:
        wrong = int(_ref(row)) + 1
        for reply in (f"\\boxed{{{wrong}}}", f"The answer is {wrong}.", f"#### {wrong}", f"it is {wrong}"):
            assert answers_match(extract_answer(reply).answer, _ref(row)) is False, reply


def test_comma_reference_from_gsm8k_matches_plain_and_grouped(gsm8k_dir):
    row = next(r for r in _gsm8k_rows(gsm8k_dir) if r["answer"].endswith("#### 114,200"))
    assert reference_answer({"answer": row["answer"]}) == "114200"
    assert answers_match("114,200", "114200")
    assert answers_match("$114200.00", "114,200")
    assert not answers_match("114,201", "114200")


def test_negative_reference_from_gsm8k(gsm8k_dir):
    row = next(r for r in _gsm8k_rows(gsm8k_dir) if _ref(r).startswith("-"))
    ref = _ref(row)
    assert answers_match(extract_answer(f"The answer is {ref}.").answer, ref)
    assert not answers_match(extract_answer(f"The answer is {ref[1:]}.").answer, ref)  # sign matters


# --- normalisation and equivalence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("$1,234", "1234"),
        ("1,234.00", "1234"),
        ("18.0", "18"),
        ("+7", "7"),
        ("-3", "-3"),
        ("50%", "50"),
        ("50 percent", "50"),
        ("12 eggs per day", "12"),
        ("\\text{18 dollars}", "18"),
        ("\\dfrac{1}{2}", "1/2"),
        ("\\frac{6}{4}", "3/2"),
        ("\\frac12", "1/2"),
        ("2/4", "1/2"),
        ("\\$5", "5"),
        ("\\(\\tfrac{3}{4}\\)", "3/4"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_equivalence_numbers_fractions_and_expressions():
    assert answers_match("0.5", "1/2")
    assert answers_match("\\frac{3}{4}", "0.75")
    assert answers_match("x + 1", "1 + x")  # math-verify, not string equality
    assert answers_match("\\sqrt{4}", "2")
    assert not answers_match("0.3333", "1/3")  # exact numeric comparison, no rounding
    assert answers_match(None, "5") is None
    assert answers_match("that she has 5 apples", "5")


def test_last_boxed_handles_nested_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{\\sqrt{4}}}") == "\\frac{1}{\\sqrt{4}}"
    assert last_boxed("\\boxed{unbalanced") is None
    assert last_boxed("no box") is None


# --- the judges ----------------------------------------------------------------------------------------


def test_judge_uses_reference_answer_and_falls_back_to_hashes(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]  # Janet's ducks: 18
    judge = MathAnswerAsJudge()
    for with_reference in (True, False):
        out = WorkflowOutput(metadata={"final_answer": "She makes \\boxed{18} dollars."})
        assert judge.compute_reward(_task(row, with_reference), out) == (1.0, True)
        assert out.metadata["judge_method"] == "boxed"
        wrong = WorkflowOutput(metadata={"final_answer": "She makes \\boxed{16} dollars."})
        assert judge.compute_reward(_task(row, with_reference), wrong) == (0.0, False)


def test_judge_missing_reference_raises_clear_error():
    task = WorkflowTask(Task(main_query="q", metadata={"question": "q"}))
    with pytest.raises(ValueError, match="no reference answer"):
        MathAnswerAsJudge().compute_reward(task, WorkflowOutput(metadata={"final_answer": "1"}))


def test_judge_missing_final_answer_is_wrong_not_crash(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]
    out = WorkflowOutput(metadata={})
    assert MathAnswerAsJudge().compute_reward(_task(row), out) == (0.0, False)
    assert out.metadata["judge_decided_by"] == "rules_undecided"


def test_shaping_penalties_only_when_configured_and_triggered(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]
    config = make_config("task_judge.format_penalty=0.2", "task_judge.behavior_penalty=0.1")
    judge = MathAnswerAsJudge(config=config)

    def reward(format_errors: int, silent_tool_calls: int, answer: str = "\\boxed{18}") -> float:
        out = WorkflowOutput(
            metadata={
                "final_answer": answer,
                "episode_stats": {"format_errors": format_errors, "turns": 2},
                "tool_calls_without_output": silent_tool_calls,
            }
        )
        return judge.compute_reward(_task(row), out)[0]

    assert reward(0, 0) == pytest.approx(1.0)
    assert reward(1, 0) == pytest.approx(0.8)
    assert reward(0, 2) == pytest.approx(0.9)
    assert reward(3, 1) == pytest.approx(0.7)
    assert reward(1, 1, answer="\\boxed{17}") == pytest.approx(-0.3)
    # correctness dominates: a correct, sloppy episode still beats a clean wrong one
    assert reward(1, 1) > reward(0, 0, answer="\\boxed{17}")
    # penalties off by default
    out = WorkflowOutput(metadata={"final_answer": "\\boxed{18}", "episode_stats": {"format_errors": 5}})
    assert MathAnswerAsJudge().compute_reward(_task(row), out) == (1.0, True)


class _FakeJudgeLLM:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 that answers a fixed word and counts calls."""

    def __init__(self, reply: str) -> None:
        self.calls: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append(body)
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _llm_config(base_url: str) -> AjetConfig:
    prefix = "task_judge.llm_judge"
    return make_config(f"{prefix}.enabled=true", f"{prefix}.base_url={base_url}", f"{prefix}.model=judge", f"{prefix}.timeout=5")


@pytest.mark.network_loopback
async def test_llm_judge_decides_only_what_rules_cannot(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]
    llm = _FakeJudgeLLM("CORRECT")
    try:
        judge = MathAnswerAndLlmAsJudge(config=_llm_config(llm.base_url))
        # rules decide (wrong number): the LLM is not asked, even though it would say CORRECT
        out = WorkflowOutput(metadata={"final_answer": "\\boxed{17}"})
        assert await judge.compute_reward(_task(row), out) == (0.0, False)
        assert llm.calls == []
        # nothing extractable: the LLM decides
        out = WorkflowOutput(metadata={"final_answer": "eighteen dollars"})
        assert await judge.compute_reward(_task(row), out) == (1.0, True)
        assert out.metadata["judge_decided_by"] == "llm"
        assert len(llm.calls) == 1 and "Reference final answer: 18" in llm.calls[0]["messages"][0]["content"]
    finally:
        llm.close()


@pytest.mark.network_loopback
async def test_llm_judge_failure_keeps_rule_verdict(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    judge = MathAnswerAndLlmAsJudge(config=_llm_config(f"http://127.0.0.1:{dead_port}/v1"))
    out = WorkflowOutput(metadata={"final_answer": "eighteen dollars"})
    assert await judge.compute_reward(_task(row), out) == (0.0, False)
    assert out.metadata["judge_decided_by"] == "rules_undecided"

    llm = _FakeJudgeLLM("I am not sure")
    try:
        judge = MathAnswerAndLlmAsJudge(config=_llm_config(llm.base_url))
        out = WorkflowOutput(metadata={"final_answer": "eighteen dollars"})
        assert await judge.compute_reward(_task(row), out) == (0.0, False)
        assert len(llm.calls) == 1
    finally:
        llm.close()


async def test_llm_judge_off_by_default_equals_rules(gsm8k_dir):
    row = _gsm8k_rows(gsm8k_dir, 1)[0]
    out = WorkflowOutput(metadata={"final_answer": "eighteen dollars"})
    assert await MathAnswerAndLlmAsJudge().compute_reward(_task(row), out) == (0.0, False)
