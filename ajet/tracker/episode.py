"""EpisodeTracker: everything one episode sent to and got from the model, token for token.

The proxy asks it for each request's prompt ids (`prepare_prompt`, spliced onto earlier sampled
tokens, see ajet.tracker.splice) and records every sampled choice (`record`). When the episode is
over, `samples()` merges the calls into training samples, `metrics()` summarises them and
`drift_report()` compares the tracked tokens with a fresh render of the final conversation.
Thread-safe: the proxy records from its server thread while the runner reads from its loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ajet.schema import Sample
from ajet.tracker.call import LLMCall
from ajet.tracker.drift import DriftReport, check_drift
from ajet.tracker.render import ChatRenderer, Message, end_of_turn_id
from ajet.tracker.samples import build_samples
from ajet.tracker.splice import PromptPlan, plan_prompt
from ajet.tracker.turns import Turn, turns_from_calls

logger = logging.getLogger(__name__)


class EpisodeTracker:
    def __init__(self, episode_id: str, tokenizer: Any = None, *, task_id: str = "") -> None:
        self.episode_id = episode_id
        self.task_id = task_id
        self.tokenizer = tokenizer
        self._calls: list[LLMCall] = []
        self._lock = threading.Lock()
        self._turns = 0
        self._counters = {"splice_misses": 0, "splices": 0, "turn_limit_hits": 0, "prompt_limit_hits": 0, "abandoned_calls": 0}
        self._drift: DriftReport | None = None
        self._drift_at_calls = -1
        self._drift_warned = False
        self._end_id: int | None = None

    # -- recording (proxy side) ---------------------------------------------------------------

    def begin_turn(self, max_turns: int | None = None) -> int | None:
        """Reserve the next request index, or return None (counted) when `max_turns` are used up.

        Check and reservation are one step, so concurrent requests of one episode cannot overshoot.
        """
        with self._lock:
            if max_turns is not None and self._turns >= max_turns:
                self._counters["turn_limit_hits"] += 1
                return None
            turn = self._turns
            self._turns += 1
            return turn

    @property
    def turns_started(self) -> int:
        return self._turns

    def count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def prepare_prompt(self, messages: list[Message], tools: list[dict] | None) -> PromptPlan:
        """Prompt ids for a request with normalised `messages` (see ajet.tracker.splice)."""
        if self.tokenizer is None:
            raise RuntimeError("EpisodeTracker needs a tokenizer to prepare prompts")
        with self._lock:
            calls = list(self._calls)
        if self._end_id is None:
            self._end_id = end_of_turn_id(self.tokenizer)
        plan = plan_prompt(calls, messages, tools, ChatRenderer(self.tokenizer), self._end_id)
        if plan.source is not None:
            self.count("splices")
        elif plan.miss is not None:
            self.count("splice_misses")
            logger.debug("episode %s: splice miss (%s); prompt re-rendered, a new sample starts", self.episode_id, plan.miss)
        return plan

    def record(self, call: LLMCall) -> None:
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[LLMCall]:
        with self._lock:
            return list(self._calls)

    # -- reading (runner side) ----------------------------------------------------------------

    def samples(self, limits: Any = None, *, task_id: str | None = None) -> list[Sample]:
        """Training samples of the episode; reward is left for the runner to fill in.

        `limits` is an EpisodeLimits (or anything with max_prompt_tokens / max_response_tokens /
        max_total_tokens attributes); None means no truncation.
        """
        return build_samples(
            self.calls,
            task_id=self.task_id if task_id is None else task_id,
            episode_id=self.episode_id,
            max_prompt_tokens=getattr(limits, "max_prompt_tokens", None),
            max_response_tokens=getattr(limits, "max_response_tokens", None),
            max_total_tokens=getattr(limits, "max_total_tokens", None),
        )

    def turns(self) -> tuple[Turn, ...]:
        """The recorded calls as a judge reads them (copies; see ajet.tracker.turns)."""
        return turns_from_calls(self.calls)

    def drift_report(self, tokenizer: Any = None, final_messages: list[Message] | None = None) -> DriftReport:
        """Drift between the last call's tracked ids and a fresh render (see ajet.tracker.drift).

        Logs once per episode (INFO) when drift is found; `metrics()['drift']` counts it.
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        calls = self.calls
        if not calls or tokenizer is None:
            return DriftReport(False)
        report = check_drift(tokenizer, calls[-1], final_messages)
        self._drift, self._drift_at_calls = report, len(calls)
        if report.drifted and not self._drift_warned:
            self._drift_warned = True
            # Informational: training uses the sampled ids; this says where re-tokenising the text
            # (what a framework without splicing would train on) would have differed.
            logger.info("episode %s: %s (trained on the sampled tokens)", self.episode_id, report.describe())
        return report

    def metrics(self) -> dict[str, float]:
        """Counts for logging and judges.

        turns: requests answered by the engine; calls: sampled choices (n per request);
        tool_calls / format_errors: parsed tool calls and malformed tool-call replies;
        prompt_tokens / response_tokens: summed over calls; truncations: replies cut by max_tokens
        plus requests refused by a limit; length_cuts: replies cut by max_tokens (the per-turn cap or
        the context window); last_reply_truncated: 1 when the episode's last reply was one of them
        (a judge should not read an answer into it); splices / splice_misses: see ajet.tracker.splice;
        drift: 1 when the drift check found a difference.
        """
        calls = self.calls
        if calls and self.tokenizer is not None and self._drift_at_calls != len(calls):
            try:
                self.drift_report()
            except Exception:  # a template that cannot re-render must not break episode accounting
                logger.debug("drift check failed for episode %s", self.episode_id, exc_info=True)
        with self._lock:
            counters = dict(self._counters)
        length_cuts = sum(1 for c in calls if c.finish_reason == "length")
        return {
            "turns": float(len({c.turn for c in calls})),
            "calls": float(len(calls)),
            "tool_calls": float(sum(c.num_tool_calls for c in calls)),
            "format_errors": float(sum(1 for c in calls if c.tool_call_format_error)),
            "prompt_tokens": float(sum(len(c.prompt_ids) for c in calls)),
            "response_tokens": float(sum(len(c.response_ids) for c in calls)),
            "truncations": float(length_cuts + counters["turn_limit_hits"] + counters["prompt_limit_hits"]),
            "length_cuts": float(length_cuts),
            "last_reply_truncated": float(bool(calls) and calls[-1].finish_reason == "length"),
            "turn_limit_hits": float(counters["turn_limit_hits"]),
            "prompt_limit_hits": float(counters["prompt_limit_hits"]),
            "splices": float(counters["splices"]),
            "splice_misses": float(counters["splice_misses"]),
            # Calls whose client went away before the reply (their generation was cancelled).
            "abandoned_calls": float(counters["abandoned_calls"]),
            "drift": float(bool(self._drift and self._drift.drifted)),
        }
