"""A reward for random models: a number in [0, 1) fixed by the reply's text.

A random model never solves a real task, so a real judge gives every episode of a group the same
reward, GRPO's advantages are all 0 and the weights never move. This reward differs between two
different replies except about once in 2**32, so every group of distinct samples carries a gradient,
training changes the policy, and a broken weight sync shows up as a logprob gap. (A reward of 7
values, which tests used before, tied within a group one time in 7: a step whose groups all tied
had no gradient.)
"""

from __future__ import annotations

import hashlib


def reply_hash_reward(text: str) -> float:
    """The first 32 bits of SHA-256(`text`) as a fraction of 2**32."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32
