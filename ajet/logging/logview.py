"""One self-contained HTML page showing what the trainer saw: episodes rendered token by token.

Tokens outside the loss (prompt, tool output, user turns) are yellow; trained tokens are blue, light
for likely tokens and dark for unlikely ones (by their rollout logprob); hovering a token shows its
id, logprob and the episode's advantage. No server, no external assets: open the file in a browser.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ajet.schema import EpisodeResult, Sample

# Logprobs at or below this render darkest; most of the visible range is then spent where tokens
# actually differ (p from 1 down to ~0.0025).
DARKEST_LOGPROB = -6.0
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
.legend span { padding: 0 .4em; margin-right: .6em; }
.episode { border: 1px solid #ccc; border-radius: 6px; margin: 1.2em 0; padding: .6em 1em; }
.episode.success { border-left: 6px solid #2a9d4b; }
.episode.failure { border-left: 6px solid #c0392b; }
.meta { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; font-size: .9em; }
.meta dt { font-weight: 600; }
.meta dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
.error { color: #b00020; font-weight: 600; }
.sample { font-family: ui-monospace, monospace; font-size: .85em; line-height: 1.7; white-space: pre-wrap;
          word-break: break-all; border-top: 1px dashed #ddd; margin-top: .5em; padding-top: .5em; }
.tok { border-radius: 2px; }
.tok:hover { outline: 1px solid #000; }
.ctx { background: #fff3b0; }
.tr { color: #000; }
.tr.dark { color: #fff; }
details { font-size: .85em; margin-top: .4em; }
"""


def write_logview(
    path: str | Path,
    episodes: Sequence[EpisodeResult],
    tokenizer: Any,
    advantages: Sequence[float] | Mapping[Any, float] | None = None,
    step: int | None = None,
    title: str = "ajet logview",
    *,
    max_episodes: int | None = None,
) -> Path:
    """Render `episodes` (their samples' input_ids, loss_mask, rollout_logprobs) into one HTML file.

    Args:
        path: output file; written atomically (a reader never sees half a page).
        episodes: judged episodes to show.
        tokenizer: anything with `decode(list[int]) -> str`.
        advantages: one per episode (same order); or a mapping keyed by `id(sample)` (per sample, as
            the training batch pairs them) or by episode_id; or None.
        step: the training step, shown in the heading.
        title: page title.
        max_episodes: render at most this many.
    Returns:
        The path written.
    """
    path = Path(path)
    shown = list(episodes)[:max_episodes] if max_episodes is not None else list(episodes)
    heading = title if step is None else f"{title} — step {step}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(heading)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(heading)}</h1>",
        (
            '<p class="legend"><span class="tok ctx">not trained (prompt, tool, user)</span>'
            f'<span class="tok tr" style="{_blue(0.0)}">trained, likely</span>'
            f'<span class="tok tr dark" style="{_blue(DARKEST_LOGPROB)}">trained, unlikely</span>'
            "hover a token for id, logprob, advantage</p>"
        ),
    ]
    for index, episode in enumerate(shown):
        parts.append(_episode_html(index, episode, _advantage_lookup(advantages, index, episode), tokenizer))
    parts.append("</body></html>")
    _atomic_write(path, "\n".join(parts))
    return path


def _advantage_lookup(advantages: Any, index: int, episode: EpisodeResult) -> Any:
    """A function sample -> advantage (or None) for one episode."""
    if advantages is None:
        return lambda sample: None
    if isinstance(advantages, Mapping):
        by_episode = advantages.get(episode.episode_id)
        return lambda sample: advantages.get(id(sample), by_episode)
    value = advantages[index] if index < len(advantages) else None
    return lambda sample: value


def _episode_html(index: int, episode: EpisodeResult, advantage_of: Any, tokenizer: Any) -> str:
    # Samples of one episode share its advantage in GRPO; show the first one in the header.
    advantage = next((a for a in map(advantage_of, episode.samples) if a is not None), None)
    status = "success" if episode.is_success else "failure"
    rows = [
        ("task", episode.task_id),
        ("episode", f"{episode.episode_id} (repeat {episode.repeat_index})"),
        ("reward", _num(episode.reward)),
        ("is_success", str(bool(episode.is_success))),
        ("advantage", "—" if advantage is None else _num(advantage)),
        ("turns", str(episode.num_turns)),
        ("query", episode.task.main_query),
    ]
    meta = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    errors = ""
    if episode.error:
        errors += f'<p class="error">workflow error: {_esc(episode.error)}</p>'
    if episode.judge_error:
        errors += f'<p class="error">judge error: {_esc(episode.judge_error)}</p>'
    details = ""
    output_meta = dict(episode.output.metadata) if episode.output is not None else {}
    if episode.metrics:
        output_meta["episode_metrics"] = episode.metrics
    if output_meta:
        text = json.dumps(output_meta, ensure_ascii=False, indent=1, default=str)
        details = f"<details><summary>workflow output / verdict</summary><pre>{_esc(text[:4000])}</pre></details>"
    samples = "".join(_sample_html(s, advantage_of(s), tokenizer) for s in episode.samples)
    if not episode.samples:
        samples = '<p class="sample">(no samples)</p>'
    return (
        f'<section class="episode {status}" id="episode-{index}" data-episode-id="{_esc(episode.episode_id)}">'
        f'<dl class="meta">{meta}</dl>{errors}{details}{samples}</section>'
    )


def _sample_html(sample: Sample, advantage: float | None, tokenizer: Any) -> str:
    adv_text = "—" if advantage is None else f"{advantage:+.3f}"
    spans = []
    for token_id, in_loss, logprob in zip(sample.input_ids, sample.loss_mask, sample.rollout_logprobs):
        text = _esc(tokenizer.decode([token_id]))
        if in_loss:
            dark = " dark" if _darkness(logprob) > 0.55 else ""
            tip = f"id {token_id} · logprob {logprob:.4f} · p {math.exp(logprob):.3f} · advantage {adv_text}"
            spans.append(
                f'<span class="tok tr{dark}" style="{_blue(logprob)}" title="{_esc(tip)}" '
                f'data-id="{token_id}" data-lp="{logprob:.4f}">{text}</span>'
            )
        else:
            spans.append(f'<span class="tok ctx" title="id {token_id} · not trained" data-id="{token_id}">{text}</span>')
    trained = sum(sample.loss_mask)
    return (
        f'<div class="sample" data-trained-tokens="{trained}">'
        f"<small>{len(sample.input_ids)} tokens, {trained} trained</small>\n{''.join(spans)}</div>"
    )


def _darkness(logprob: float) -> float:
    """0 for logprob 0 (p = 1) up to 1 at DARKEST_LOGPROB and below."""
    if not math.isfinite(logprob):
        return 1.0
    return min(1.0, max(0.0, logprob / DARKEST_LOGPROB))


def _blue(logprob: float) -> str:
    lightness = round(92 - 62 * _darkness(logprob))  # 92% (pale) .. 30% (deep blue)
    return f"background-color: hsl(210, 85%, {lightness}%)"


def _num(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
