"""A toy task a tiny random model learns in minutes on a CPU: the learning proof and the async benchmark.

The model speaks one character per token (a character-level vocabulary with a ChatML template), so the
reward is exact at token level without re-tokenising: reward = share of the response's characters
that lie in TARGET_CHARS. A random policy scores about len(TARGET_CHARS)/vocab (≈0.14) and its
episodes differ within a group, so GRPO has a signal from the first step.
"""

from __future__ import annotations

import asyncio
import json
import math
import string
from pathlib import Path

from ajet import Workflow, WorkflowOutput
from ajet.judge.base import BaseJudge

TARGET_CHARS = set("abcdefghijkl")
ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,!?:;'-()\n" + "+*/=#$%&@"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_char_model(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama model with a character-level tokenizer to `directory`."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    vocab["<unk>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(directory)
    # transformers 5 may rebuild a tokenizer from the model type's own class (Qwen2's byte-level
    # pre-tokenizer would drop our character vocabulary); a Llama config with this explicit class keeps
    # tokenizer.json as written.
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2))

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def write_prompts(path: Path, n: int = 16, turns: list[int] | None = None, tool_latency_s: float = 0.0) -> Path:
    """A JSONL task file; `turns[i % len(turns)]` model calls for task i (default one each), with a
    simulated tool call of `tool_latency_s` seconds between consecutive calls."""
    turns = turns or [1]
    rows = [
        {
            "question": f"Write something, please ({i}).",
            "answer": "#### 0",
            "turns": turns[i % len(turns)],
            "tool_latency_s": tool_latency_s,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class CharSetWorkflow(Workflow):
    """Chat through the OpenAI SDK client; the judge scores the last reply.

    A task whose metadata has `turns: N` makes N calls, feeding each reply back with a user "more"
    turn: that gives the asynchronous-training benchmark its long-tailed episode lengths. Between
    calls it waits `tool_latency_s` seconds, as an agent waits on a tool (a sandbox, a search API):
    time that uses no CPU, which is where overlapping rollouts with training pays even on one machine.
    """

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        metadata = workflow_task.task.metadata
        messages = [{"role": "user", "content": workflow_task.task.main_query}]
        text = ""
        for turn in range(int(metadata.get("turns", 1))):
            if turn:
                await asyncio.sleep(float(metadata.get("tool_latency_s", 0.0)))
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "more"}]
            reply = await client.chat.completions.create(model="ajet", messages=messages)
            text = reply.choices[0].message.content or ""
        return WorkflowOutput(reward=None, metadata={"final_answer": text})


def target_share(text: str) -> float:
    """Share of the characters of `text` in TARGET_CHARS (0 for an empty reply)."""
    return sum(ch in TARGET_CHARS for ch in text) / len(text) if text else 0.0


class CharSetJudge(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        share = target_share(workflow_output.metadata["final_answer"])
        return share, share >= 0.5


class CharSetLevelsJudge(BaseJudge):
    """The same task with the reward rounded down to quarters: floor(4 * share) / 4.

    Episodes of a group then often score exactly alike (all 0 while the policy is random, all 1 once
    it has learned), as with the pass/fail rewards of real tasks: what dynamic sampling is for. A
    random policy scores 0 on about three replies in four.
    """

    LEVELS = 4

    def compute_reward(self, workflow_task, workflow_output):
        share = target_share(workflow_output.metadata["final_answer"])
        return math.floor(share * self.LEVELS) / self.LEVELS, share >= 0.5


class CharSetPassJudge(BaseJudge):
    """Pass/fail: reward 1 when at least a quarter of the reply's characters are targets, else 0.

    A random policy passes about one reply in five, so about one group of 8 in five fails entirely;
    a trained one passes nearly always, and most groups then pass entirely: groups without a reward
    spread at both ends, as on real pass/fail tasks.
    """

    THRESHOLD = 0.25

    def compute_reward(self, workflow_task, workflow_output):
        passed = target_share(workflow_output.metadata["final_answer"]) >= self.THRESHOLD
        return float(passed), passed
