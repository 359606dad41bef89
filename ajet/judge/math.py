"""Math-answer judging: pull the final answer out of a reply, normalise it, compare it with the reference.

Pure functions first (`extract_answer`, `normalize_answer`, `answers_match`, `reference_answer`), then the
two judges the tutorial YAML names:

- `MathAnswerAsJudge`: rules only. Reward 1 for a correct final answer, 0 otherwise, minus the optional
  shaping penalties (`task_judge.format_penalty`, `task_judge.behavior_penalty`).
- `MathAnswerAndLlmAsJudge`: the same rules; when they cannot decide (nothing could be extracted, or the
  extracted answer is neither a number nor something math-verify can parse), it asks an
  OpenAI-compatible model configured under `task_judge.llm_judge`. Off by default; any failure of that
  call keeps the rule verdict.

Extraction order, first hit wins: the last `\\boxed{...}` (nested braces allowed), the last `#### N`,
the last "the answer is ..." / "final answer: ...", then the last number in the text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from ajet.config.schema import TaskJudgeConfig
from ajet.judge.base import BaseJudge
from ajet.schema import WorkflowOutput, WorkflowTask
from ajet.task_reader.rows import solution_final_answer

logger = logging.getLogger(__name__)

ExtractionMethod = Literal["boxed", "hashes", "answer_phrase", "last_number", "none"]

_NUMBER = r"[-+]?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\$?\s*\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_FRACTION_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)$")
_HASHES_RE = re.compile(r"####\s*([^\n]+)")
# "The answer is 18.", "Final answer: $18", "answer: 3.5" - the phrase ends at a newline or at a full
# stop followed by whitespace/end (so the dot inside "3.5" does not end it).
_ANSWER_PHRASE_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?=\n|\.\s|\.$|$)",
    re.IGNORECASE,
)
_LATEX_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SIMPLE_FRAC_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
# Words that trail an answer in word problems ("18 dollars", "5 apples per day") and never change its
# value. Anything after the leading number is dropped only when it is made of letters, so "1/2" or
# "2^10" are kept whole.
_PROSE_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # an English word, not a LaTeX command
_TRAILING_WORDS_RE = re.compile(r"^([-+]?[\d.,/]+)\s*(?:%|percent)?\s*[a-zA-Z][a-zA-Z\s.'’-]*$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces balanced.

    A regex cannot match balanced braces, so this scans by hand.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # "\boxed 18" (no braces) is valid LaTeX for a single token.
        match = re.match(r"\\(?:boxed|fbox)\s+(\S+)", text[start:])
        return match.group(1) if match else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None  # unbalanced: treat as no box


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    method: ExtractionMethod


def extract_answer(text: str | None) -> Extraction:
    """Find the final answer in a model reply (see the module docstring for the order of rules)."""
    if not text:
        return Extraction(None, "none")
    boxed = last_boxed(text)
    if boxed:
        return Extraction(boxed, "boxed")
    hashes = _HASHES_RE.findall(text)
    if hashes and hashes[-1].strip():
        return Extraction(hashes[-1].strip(), "hashes")
    phrases = [p.strip() for p in _ANSWER_PHRASE_RE.findall(text) if p.strip()]
    if phrases:
        return Extraction(phrases[-1], "answer_phrase")
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return Extraction(numbers[-1].strip(), "last_number")
    return Extraction(None, "none")


def normalize_answer(answer: str) -> str:
    """Canonical text form of an answer: "$1,234.00 dollars" -> "1234", "\\dfrac{1}{2}" -> "1/2"."""
    s = answer.strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\$", "$").replace("\\%", "%")
    s = re.sub(r"\\[()\[\]]", "", s)  # inline/display math delimiters \( \) \[ \]
    s = _LATEX_WRAPPERS_RE.sub(r"\1", s)
    s = _LATEX_FRAC_RE.sub(r"(\1)/(\2)", s)
    s = _LATEX_SIMPLE_FRAC_RE.sub(r"\1/\2", s)
    s = s.replace("$", "").replace("€", "").replace("£", "").replace("¥", "")
    s = s.strip().rstrip(".").strip()
    # "(3)/(4)" from \frac, or "{3}/{4}", with plain-number parts -> "3/4"
    s = re.sub(r"[({](\s*[-+]?\d+(?:\.\d+)?\s*)[)}]", r"\1", s)
    # thousands separators: only commas between digit groups, so "1,2" (a list) is left alone
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    match = _TRAILING_WORDS_RE.match(s)
    if match:
        s = match.group(1)
    s = s.rstrip("%").strip()
    if s.startswith("+"):
        s = s[1:]
    number = _to_fraction(s)
    if number is not None:
        return _format_number(number)
    return s


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of an integer, decimal or `a/b` string; None for anything else."""
    s = s.strip()
    try:
        if re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", s):
            return Fraction(s)
        match = _FRACTION_RE.match(s)
        if match and Fraction(match.group(2)) != 0:
            return Fraction(match.group(1)) / Fraction(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _math_verify_equal(predicted: str, reference: str) -> bool | None:
    """math-verify's symbolic comparison; None when it cannot parse one side."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a hard dependency
        return None
    # math-verify times out with signal.alarm, which only works on the main thread; elsewhere run
    # without its timeout (inputs here are short answers, not whole solutions).
    on_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if on_main else None
    math_verify_logger = logging.getLogger("math_verify")
    previous_level = math_verify_logger.level
    math_verify_logger.setLevel(logging.ERROR)  # it warns on every call made without a timeout
    try:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        target = parse(f"${predicted}$", parsing_timeout=timeout)
        if not gold or not target:
            return None
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:  # math-verify raises assorted sympy errors on odd input
        logger.debug("math-verify failed on %r vs %r", predicted, reference, exc_info=True)
        return None
    finally:
        math_verify_logger.setLevel(previous_level)


def answers_match(predicted: str | None, reference: str) -> bool | None:
    """True/False when the rules can decide; None when they cannot (nothing extracted, or unparsable).

    Plain numbers are compared exactly (as fractions, so 0.1 + 0.2 style float error cannot creep in);
    anything else (fractions in LaTeX, expressions) goes to math-verify.
    """
    if predicted is None or not predicted.strip():
        return None
    pred = normalize_answer(predicted)
    ref = normalize_answer(reference)
    if pred == ref:
        return True
    pred_value, ref_value = _to_fraction(pred), _to_fraction(ref)
    if pred_value is not None and ref_value is not None:
        return pred_value == ref_value
    if ref_value is not None and _PROSE_WORD_RE.search(pred):
        # A numeric reference and a phrase around a number ("that she has 5 apples"): judge its last number.
        numbers = _NUMBER_RE.findall(pred)
        if numbers:
            return _to_fraction(normalize_answer(numbers[-1])) == ref_value
        return None  # prose without a number ("eighteen dollars"): for the LLM judge, if enabled
    return _math_verify_equal(pred, ref)


def reference_answer(metadata: dict[str, Any]) -> str:
    """The reference final answer of a task: `reference_answer`, else the final answer of `answer`."""
    ref = metadata.get("reference_answer")
    if ref is not None and str(ref).strip():
        return str(ref).strip()
    solution = metadata.get("answer")
    final = solution_final_answer(solution) if solution is not None else ""
    if final:
        return final
    raise ValueError(
        "math judge: the task has no reference answer; expected metadata['reference_answer'] or a GSM8K "
        f"style metadata['answer'] ending in '#### N' (metadata keys: {sorted(metadata)})"
    )


@dataclass(frozen=True)
class Verdict:
    """What the rules (and maybe the LLM) concluded about one episode."""

    correct: bool
    decided_by: Literal["rules", "rules_undecided", "llm"]
    extracted: str | None
    method: ExtractionMethod
    reference: str


def judge_answer(response: str | None, reference: str) -> Verdict:
    """Rule verdict for one reply; undecidable counts as wrong (`decided_by="rules_undecided"`)."""
    extraction = extract_answer(response)
    match = answers_match(extraction.answer, reference)
    return Verdict(
        correct=bool(match),
        decided_by="rules" if match is not None else "rules_undecided",
        extracted=extraction.answer,
        method=extraction.method,
        reference=reference,
    )


def shaping_penalty(workflow_output: WorkflowOutput, format_penalty: float, behavior_penalty: float) -> float:
    """Total penalty from the episode's recorded behaviour (0 when nothing went wrong).

    `format_penalty` applies when the runner's `episode_stats["format_errors"] > 0` (a malformed
    `<tool_call>`); `behavior_penalty` when the workflow counted tool code that printed nothing
    (`metadata["tool_calls_without_output"] > 0`).
    """
    stats = workflow_output.metadata.get("episode_stats") or {}
    penalty = 0.0
    if format_penalty and float(stats.get("format_errors", 0) or 0) > 0:
        penalty += float(format_penalty)
    if behavior_penalty and int(workflow_output.metadata.get("tool_calls_without_output", 0) or 0) > 0:
        penalty += float(behavior_penalty)
    return penalty


class MathAnswerAsJudge(BaseJudge):
    """Rules-only judge: reward = 1[correct] - penalties; success = correct.

    Reads `workflow_output.metadata["final_answer"]` (the agent's last reply) and the task's reference
    (`reference_answer`, or the `#### N` of `answer`). Writes its verdict into the output's metadata
    (`judge_extracted`, `judge_method`, `judge_decided_by`) so the logview shows why.
    """

    @property
    def settings(self) -> TaskJudgeConfig:
        return self.config.task_judge

    def rule_verdict(self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput) -> Verdict:
        reference = reference_answer(workflow_task.task.metadata)
        response = workflow_output.metadata.get("final_answer")
        return judge_answer(None if response is None else str(response), reference)

    def _reward(self, verdict: Verdict, workflow_output: WorkflowOutput) -> tuple[float, bool]:
        workflow_output.metadata.update(
            judge_extracted=verdict.extracted, judge_method=verdict.method, judge_decided_by=verdict.decided_by
        )
        settings = self.settings
        penalty = shaping_penalty(workflow_output, settings.format_penalty, settings.behavior_penalty)
        reward = (1.0 if verdict.correct else 0.0) - penalty
        return reward, verdict.correct

    def compute_reward(self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput) -> tuple[float, bool]:
        return self._reward(self.rule_verdict(workflow_task, workflow_output), workflow_output)


LLM_JUDGE_PROMPT = """You are grading a student's answer to a math word problem.

Problem:
{question}

Reference final answer: {reference}

Student's response:
{response}

Is the student's final answer mathematically equal to the reference final answer? Ignore the working,
units and formatting. Reply with exactly one word: CORRECT or INCORRECT."""


class MathAnswerAndLlmAsJudge(MathAnswerAsJudge):
    """Rules first; an LLM decides only what the rules cannot (see `task_judge.llm_judge` in the YAML).

    With `llm_judge.enabled: false` (the default) this is exactly `MathAnswerAsJudge`.
    """

    async def compute_reward(  # type: ignore[override]  # BaseJudge allows an async compute_reward
        self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput
    ) -> tuple[float, bool]:
        verdict = self.rule_verdict(workflow_task, workflow_output)
        if verdict.decided_by == "rules_undecided" and self.settings.llm_judge.enabled:
            llm_correct = await self.ask_llm(workflow_task, workflow_output, verdict.reference)
            if llm_correct is not None:
                verdict = Verdict(llm_correct, "llm", verdict.extracted, verdict.method, verdict.reference)
        return self._reward(verdict, workflow_output)

    async def ask_llm(self, workflow_task: WorkflowTask, workflow_output: WorkflowOutput, reference: str) -> bool | None:
        """The LLM's verdict, or None when it is unavailable or says something else."""
        llm = self.settings.llm_judge
        base_url, model = llm.base_url, llm.model
        if not base_url or not model:
            logger.warning("llm_judge is enabled but base_url/model are not set; keeping the rule verdict")
            return None
        prompt = LLM_JUDGE_PROMPT.format(
            question=workflow_task.task.main_query,
            reference=reference,
            response=workflow_output.metadata.get("final_answer") or "(no response)",
        )
        try:
            import openai

            client = openai.AsyncOpenAI(
                base_url=base_url, api_key=os.environ.get(llm.api_key_env) or "EMPTY", timeout=llm.timeout, max_retries=0
            )
            async with client:
                completion = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=8
                )
            text = (completion.choices[0].message.content or "").strip().upper()
        except Exception as exc:  # noqa: BLE001 - network, auth, timeout: the rule verdict stands
            logger.warning("llm_judge call failed (%s); keeping the rule verdict", exc)
            return None
        if text.startswith("INCORRECT"):
            return False
        if text.startswith("CORRECT"):
            return True
        logger.warning("llm_judge replied %r, neither CORRECT nor INCORRECT; keeping the rule verdict", text)
        return None
