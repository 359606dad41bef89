"""The tests' reward for random models: fixed by the text, spread over [0, 1), rarely tied."""

from ajet.testing.reply_hash import reply_hash_reward


def test_the_reward_is_a_function_of_the_text_and_different_replies_do_not_tie():
    replies = [f"reply {i}" for i in range(2000)]
    rewards = [reply_hash_reward(r) for r in replies]
    assert rewards == [reply_hash_reward(r) for r in replies]  # the same text, the same reward
    assert all(0.0 <= r < 1.0 for r in rewards)
    assert len(set(rewards)) == len(replies)  # no two of 2000 replies tie
    assert 0.4 < sum(rewards) / len(rewards) < 0.6  # spread over [0, 1), not bunched
    assert reply_hash_reward("") != reply_hash_reward(" ")
