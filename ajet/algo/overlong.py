"""DAPO's overlong reward shaping (Yu et al., 2025, arXiv:2503.14476): a soft penalty near the length limit.

A response that ends well inside the limit is not penalised; inside the last `buffer_len` tokens
before `max_length` the penalty grows linearly, reaching `-penalty_factor` at the limit, where a
response cut by it ends:

    penalty(L) = min(0, -(L - (max_length - buffer_len)) / buffer_len * penalty_factor)

so a truncated reply is told "too long" with a graded signal instead of whatever its cut-off text
happened to score. verl's DAPO reward manager uses the same formula (`overlong_buffer_cfg`).
"""

from __future__ import annotations


def overlong_penalty(response_length: int, max_length: int, buffer_len: int, penalty_factor: float) -> float:
    """The (non-positive) reward added to a response of `response_length` tokens; see the module docstring."""
    if buffer_len <= 0 or buffer_len > max_length:
        raise ValueError(f"buffer_len must be in (0, max_length={max_length}], got {buffer_len}")
    expected = max_length - buffer_len
    return min(0.0, -(response_length - expected) / buffer_len * penalty_factor)
