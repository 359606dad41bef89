"""The policy update of one GRPO step: samples + advantages in, updated weights and metrics out.

The loop (ajet/backbone) owns rollouts, judging, advantages, weight sync and scheduling; this class
owns only the model being trained, its optimizer and their checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from ajet.algo import (
    agg_loss,
    kl_penalty,
    logprob_gap_metrics,
    masked_sum,
    policy_loss_fn,
    ratio_band_mask,
    truncated_is_weights,
)
from ajet.config.schema import LoraConfig, TrainerCommonConfig
from ajet.schema import Sample
from ajet.trainer.checkpoint import (
    atomic_checkpoint,
    capture_rng_state,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    read_meta,
    restore_rng_state,
)
from ajet.trainer.logprobs import sequence_logprobs
from ajet.trainer.lora import apply_lora, merged_base_weights

logger = logging.getLogger(__name__)


@dataclass
class _Seq:
    """One sample as 1-D tensors on the training device, plus what earlier passes computed for it."""

    input_ids: torch.Tensor  # [L] long
    loss_mask: torch.Tensor  # [L] float, after the optional ratio band mask
    rollout_logprobs: torch.Tensor  # [L]
    advantage: float
    trainer_logprobs: torch.Tensor | None = None  # [L] pre-update trainer logprobs
    ref_logprobs: torch.Tensor | None = None  # [L]
    tis_weights: torch.Tensor | None = None  # [L]


@dataclass
class _MicroBatch:
    input_ids: torch.Tensor  # [b, T]
    attention_mask: torch.Tensor  # [b, T]
    loss_mask: torch.Tensor  # [b, T]
    rollout_logprobs: torch.Tensor  # [b, T]
    advantages: torch.Tensor  # [b, T]
    old_logprobs: torch.Tensor  # [b, T] the denominator of the PPO ratio
    ref_logprobs: torch.Tensor | None
    tis_weights: torch.Tensor | None


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Keep only each decoder layer's input in the forward and recompute the layer in backward.

    The non-reentrant variant, because with LoRA the layer inputs (frozen embeddings) do not require
    grad, which the reentrant one would silently treat as "no gradient needed" for the whole layer.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"ajet.trainer_common.gradient_checkpointing=true: {type(model).__name__} does not support "
            "gradient checkpointing in transformers; set trainer_common.gradient_checkpointing=false"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class PolicyTrainer:
    """Policy-gradient updates for a transformers causal LM, full fine-tuning or LoRA, with the policy
    loss `cfg.algorithm.policy_loss.loss_mode` names (see ajet.algo.registry).

    Args:
        model: the policy (trained in place; wrapped with peft LoRA when `lora.lora_rank > 0`).
        tokenizer: used for its pad token only.
        cfg: the `trainer_common` config section.
        lora_cfg: the `lora` config section; None or rank 0 = full fine-tuning.
        device: where to train. On CUDA the forward runs under bf16 autocast; on CPU in fp32.
        ref_model: frozen reference for the KL loss (full fine-tuning only). With LoRA the reference
            is the same model with its adapter disabled. Without either, a frozen copy is made when
            `use_kl_loss` is on.
        pack: run each micro-batch as one packed row (see `sequence_logprobs`). None = auto: packed
            with a flash-attention model (varlen kernels, attention cost sum(L_i^2)); padded with
            sdpa/eager, where a packed row pays N^2 attention over the whole micro-batch instead.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        cfg: TrainerCommonConfig,
        lora_cfg: LoraConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        ref_model: nn.Module | None = None,
        pack: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.use_kl = cfg.use_kl_loss
        # The loss named by `algorithm.policy_loss.loss_mode` (vanilla PPO clip, gspo, cispo, ...).
        self.policy_loss = policy_loss_fn(cfg.algorithm.policy_loss.loss_mode)

        model = model.to(self.device)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.is_lora = lora_cfg is not None and lora_cfg.lora_rank > 0
        if self.use_kl and not self.is_lora and ref_model is None:
            ref_model = copy.deepcopy(model)
        self.model = apply_lora(model, lora_cfg) if lora_cfg is not None and self.is_lora else model
        self.ref_model = None if self.is_lora or ref_model is None else ref_model.to(self.device).eval()
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)

        if pack is None:
            attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
            pack = attn.startswith("flash_attention")
        self.pack = pack
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        low_precision = {str(p.dtype) for p in self.params if p.dtype in (torch.bfloat16, torch.float16)}
        if low_precision:
            # AdamW steps of lr ~1e-6 are far below bf16's resolution near typical weights, so they
            # would round away. fp32 weights + bf16 autocast is the supported setup.
            logger.warning(
                "training %s parameters directly: small optimizer updates are lost to rounding; "
                "load the policy in float32 (the forward still runs in bf16 under autocast on CUDA)",
                "/".join(sorted(low_precision)),
            )
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
        )
        warmup = cfg.optim.lr_warmup_steps
        # Linear warmup counted in train_step calls, reaching full lr at step `warmup`. Written here
        # rather than transformers' get_constant_schedule_with_warmup because that one gives lr = 0
        # to the very first step, which would waste a whole rollout batch.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        self.global_step = 0

    # ------------------------------------------------------------------ the update
    def train_step(self, samples: Sequence[Sample], advantages: Sequence[float], temperature: float) -> dict[str, float]:
        """One policy update on a rollout batch: `ppo_epochs` x `mini_batch_num` optimizer steps.

        Args:
            samples: the batch's training sequences (loss_mask marks the policy's tokens).
            advantages: one scalar per sample (GRPO: its episode's group-normalised reward).
            temperature: the rollout sampling temperature, so recomputed logprobs match the engine's.

        The PPO ratio's denominator is the samples' rollout logprobs (the behaviour policy). With
        `rollout_correction.tis_cap` set it is instead the trainer's own pre-update logprobs (the
        proximal policy), and each token is weighted by min(pi_trainer / pi_rollout, cap): using the
        rollout logprobs in the ratio and TIS together would correct the same gap twice.
        """
        if len(samples) != len(advantages):
            raise ValueError(f"{len(samples)} samples but {len(advantages)} advantages")
        if not samples:
            raise ValueError("train_step needs at least one sample")
        start = time.perf_counter()
        ppo_epochs = self.cfg.ppo_epochs
        mini_batch_num = min(self.cfg.mini_batch_num, len(samples))
        correction = self.cfg.rollout_correction
        tis_cap = correction.tis_cap
        band = (correction.mask_low, correction.mask_high)

        seqs = [self._to_seq(s, a) for s, a in zip(samples, advantages)]
        total_tokens = sum(int(s.input_ids.numel()) for s in seqs)
        if not self._loss_depends_on_weights(advantages):
            return self._no_signal_update(seqs, total_tokens, start)
        # Pre-update logprobs need their own pass when an earlier optimizer step would otherwise
        # have changed the weights before a mini-batch's first forward, or when they shape the loss.
        separate_pass = tis_cap is not None or band != (None, None) or ppo_epochs * mini_batch_num > 1
        metrics: dict[str, float] = {}
        if separate_pass:
            self._fill_trainer_logprobs(seqs, temperature)
            metrics.update(self._gap_metrics(seqs))
            metrics.update(self._apply_rollout_correction(seqs, tis_cap, band))
        if self.use_kl:
            self._fill_ref_logprobs(seqs, temperature)

        sums: dict[str, float] = {}
        ratio_max, grad_norms = 0.0, []
        lr = self.optimizer.param_groups[0]["lr"]
        size = math.ceil(len(seqs) / mini_batch_num)
        for epoch in range(ppo_epochs):
            for first in range(0, len(seqs), size):
                step_metrics = self._accumulate(
                    seqs[first : first + size],
                    temperature,
                    decoupled=tis_cap is not None,
                    record_trainer_logprobs=not separate_pass and epoch == 0,
                )
                ratio_max = max(ratio_max, step_metrics.pop("_ratio_max"))
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                grad_norms.append(self._optimizer_step())
        if not separate_pass:
            metrics.update(self._gap_metrics(seqs))
        self.scheduler.step()
        self.global_step += 1

        steps = len(grad_norms)
        tokens = max(sums["_tokens"], 1.0)
        finite = [g for g in grad_norms if math.isfinite(g)]
        elapsed = time.perf_counter() - start
        metrics.update(
            loss=sums["loss"] / steps,
            pg_loss=sums["pg_loss"] / steps,
            kl=sums["_kl_sum"] / tokens,
            entropy=sums["_entropy_sum"] / tokens,
            clipfrac=sums["_clip_sum"] / tokens,
            approx_kl=sums["_approx_kl_sum"] / tokens,
            ratio_max=ratio_max,
            grad_norm=sum(finite) / len(finite) if finite else float("nan"),
            skipped_steps=float(steps - len(finite)),
            no_signal=0.0,
            lr=lr,
            tokens=float(total_tokens),
            trained_tokens=float(sum(int(s.loss_mask.sum()) for s in seqs)),
            tokens_per_s=total_tokens * ppo_epochs / elapsed if elapsed > 0 else 0.0,
            update_time=elapsed,
        )
        return metrics

    def _loss_depends_on_weights(self, advantages: Sequence[float]) -> bool:
        """False when the loss is identically 0: every advantage is 0 (all groups tied) and neither
        a KL nor an entropy term is on. The policy-gradient term is -A * f(ratio) for every loss mode."""
        return self.use_kl or self.cfg.entropy_coeff != 0.0 or any(a != 0.0 for a in advantages)

    def _no_signal_update(self, seqs: list[_Seq], total_tokens: int, start: float) -> dict[str, float]:
        """The update of a batch that carries no gradient: no forward or backward pass and no optimizer
        step. Stepping AdamW on a zero gradient would still move the weights, by its momentum from
        earlier batches and its weight decay, on a batch that says nothing. The lr schedule advances,
        as it does for every train_step call."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.global_step += 1
        return {
            "loss": 0.0,
            "pg_loss": 0.0,
            "grad_norm": 0.0,
            "skipped_steps": 0.0,
            "no_signal": 1.0,
            "lr": lr,
            "tokens": float(total_tokens),
            "trained_tokens": float(sum(int(s.loss_mask.sum()) for s in seqs)),
            "update_time": time.perf_counter() - start,
        }

    @staticmethod
    def _apply_rollout_correction(seqs: list[_Seq], tis_cap: float | None, band: tuple[float | None, float | None]) -> dict[str, float]:
        """Band-mask tokens whose trainer/rollout ratio is out of range, then set the TIS weights."""
        metrics = {}
        if band != (None, None):
            dropped = total = 0
            for s in seqs:
                kept, _ = ratio_band_mask(s.trainer_logprobs, s.rollout_logprobs, s.loss_mask, band[0], band[1])
                total += int(s.loss_mask.sum())
                dropped += int(s.loss_mask.sum() - kept.sum())
                s.loss_mask = kept
            metrics["rollout_band_masked_frac"] = dropped / total if total else 0.0
        if tis_cap is not None:
            for s in seqs:
                s.tis_weights = truncated_is_weights(s.trainer_logprobs, s.rollout_logprobs, s.loss_mask, float(tis_cap))
        return metrics

    def compute_gradients(self, samples: Sequence[Sample], advantages: Sequence[float], temperature: float) -> dict[str, float]:
        """Fill `.grad` with the gradient of one mini-batch's loss (all of `samples`), without stepping.

        The same micro-batched, accumulated path `train_step` uses; exposed so the accumulation can
        be checked against one big batch.
        """
        self.optimizer.zero_grad(set_to_none=True)
        seqs = [self._to_seq(s, a) for s, a in zip(samples, advantages)]
        if self.use_kl:
            self._fill_ref_logprobs(seqs, temperature)
        return self._accumulate(seqs, temperature, decoupled=False, record_trainer_logprobs=False, zero_grad=False)

    def _accumulate(
        self,
        seqs: list[_Seq],
        temperature: float,
        *,
        decoupled: bool,
        record_trainer_logprobs: bool,
        zero_grad: bool = True,
    ) -> dict[str, float]:
        """Forward/backward every micro-batch of one mini-batch, normalised by the mini-batch totals."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        cfg = self.cfg
        mode = cfg.algorithm.loss_agg_mode
        agg = {"scale_factor": cfg.algorithm.loss_scale_factor}
        micro = cfg.micro_batch_size

        # Denominators of the whole mini-batch, so the micro-batch losses add up to its loss.
        num_tokens = sum(float(s.loss_mask.sum()) for s in seqs)
        num_seqs = sum(1.0 for s in seqs if float(s.loss_mask.sum()) > 0)
        # "_x_sum" entries are token-weighted sums, turned into means by train_step.
        out = dict.fromkeys(
            ("loss", "pg_loss", "_tokens", "_kl_sum", "_entropy_sum", "_clip_sum", "_approx_kl_sum", "_ratio_max"), 0.0
        )
        if num_tokens == 0:
            return out
        self.model.train()
        for first in range(0, len(seqs), micro):
            chunk = seqs[first : first + micro]
            mb = self._collate(chunk, decoupled)
            with self._autocast():
                logprobs, entropy = sequence_logprobs(
                    self.model, mb.input_ids, mb.attention_mask, temperature, with_entropy=True, pack=self.pack,
                    only_where=mb.loss_mask.bool(), entropy_grad=cfg.entropy_coeff != 0.0,
                )
            if record_trainer_logprobs:
                for row, s in enumerate(chunk):
                    s.trainer_logprobs = logprobs[row, : s.input_ids.numel()].detach()
            pg_loss, pg_metrics = self.policy_loss(
                logprobs, mb.old_logprobs, mb.advantages, mb.loss_mask, cfg,
                tis_weights=mb.tis_weights, num_tokens=num_tokens, num_seqs=num_seqs,
            )
            loss = pg_loss
            if self.use_kl:
                kl_mat = kl_penalty(logprobs, mb.ref_logprobs, cfg.kl_loss_type)
                loss = loss + cfg.kl_loss_coef * agg_loss(
                    kl_mat, mb.loss_mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, **agg
                )
                out["_kl_sum"] += float(masked_sum(kl_mat.detach(), mb.loss_mask))
            if cfg.entropy_coeff != 0.0:
                loss = loss - cfg.entropy_coeff * agg_loss(
                    entropy, mb.loss_mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, **agg
                )
            loss.backward()

            micro_tokens = float(mb.loss_mask.sum())
            out["loss"] += float(loss.detach())
            out["pg_loss"] += float(pg_loss.detach())
            out["_tokens"] += micro_tokens
            out["_entropy_sum"] += float(masked_sum(entropy.detach(), mb.loss_mask))
            out["_clip_sum"] += float(pg_metrics["clipfrac"]) * micro_tokens
            out["_approx_kl_sum"] += float(pg_metrics["approx_kl"]) * micro_tokens
            if micro_tokens:
                out["_ratio_max"] = max(out["_ratio_max"], float(pg_metrics["ratio_max"]))
        return out

    def _optimizer_step(self) -> float:
        """Clip and step. A non-finite gradient norm skips the step (one bad batch must not poison the
        weights), and so does a zero one (a mini-batch whose groups all tied): AdamW would still move
        the weights by its momentum and weight decay."""
        max_norm = self.cfg.optim.grad_clip or float("inf")  # null = no clipping
        grads_exist = any(p.grad is not None for p in self.params)
        if not grads_exist:
            return 0.0
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if math.isfinite(norm) and norm > 0.0:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ no-grad passes
    @torch.no_grad()
    def _fill_trainer_logprobs(self, seqs: list[_Seq], temperature: float) -> None:
        for chunk, logprobs in self._no_grad_logprobs(self.model, seqs, temperature):
            for row, s in enumerate(chunk):
                s.trainer_logprobs = logprobs[row, : s.input_ids.numel()]

    @torch.no_grad()
    def _fill_ref_logprobs(self, seqs: list[_Seq], temperature: float) -> None:
        if self.is_lora:
            ctx, model = self.model.disable_adapter(), self.model
        else:
            ctx, model = contextlib.nullcontext(), self.ref_model
        with ctx:
            for chunk, logprobs in self._no_grad_logprobs(model, seqs, temperature):
                for row, s in enumerate(chunk):
                    s.ref_logprobs = logprobs[row, : s.input_ids.numel()]

    def _no_grad_logprobs(self, model: nn.Module, seqs: list[_Seq], temperature: float) -> Iterator[tuple[list[_Seq], torch.Tensor]]:
        micro = self.cfg.micro_batch_size
        was_training = model.training
        model.eval()  # no dropout: these are the policy's logprobs, not a noisy sample of them
        try:
            for first in range(0, len(seqs), micro):
                chunk = seqs[first : first + micro]
                ids, attn = self._pad([s.input_ids for s in chunk], self.pad_token_id)
                trained, _ = self._pad([s.loss_mask for s in chunk], 0)
                with self._autocast():
                    lp = sequence_logprobs(model, ids, attn, temperature, pack=self.pack, only_where=trained.bool())
                    yield chunk, lp.float()
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ tensors
    def _to_seq(self, sample: Sample, advantage: float) -> _Seq:
        return _Seq(
            input_ids=torch.tensor(sample.input_ids, dtype=torch.long, device=self.device),
            loss_mask=torch.tensor(sample.loss_mask, dtype=torch.float32, device=self.device),
            rollout_logprobs=torch.tensor(sample.rollout_logprobs, dtype=torch.float32, device=self.device),
            advantage=float(advantage),
        )

    def _collate(self, chunk: list[_Seq], decoupled: bool) -> _MicroBatch:
        ids, attn = self._pad([s.input_ids for s in chunk], self.pad_token_id)
        loss_mask, _ = self._pad([s.loss_mask for s in chunk], 0)
        rollout, _ = self._pad([s.rollout_logprobs for s in chunk], 0)
        advantages = torch.tensor([s.advantage for s in chunk], device=self.device)[:, None] * loss_mask
        old = self._pad([s.trainer_logprobs for s in chunk], 0)[0] if decoupled else rollout
        ref = self._pad([s.ref_logprobs for s in chunk], 0)[0] if self.use_kl else None
        tis = self._pad([s.tis_weights for s in chunk], 0)[0] if chunk[0].tis_weights is not None else None
        return _MicroBatch(ids, attn, loss_mask, rollout, advantages, old, ref, tis)

    def _pad(self, rows: list[torch.Tensor], value: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad 1-D tensors to `[b, T]`; also returns the `[b, T]` attention mask."""
        longest = max(int(r.numel()) for r in rows)
        out = torch.full((len(rows), longest), value, dtype=rows[0].dtype, device=self.device)
        attn = torch.zeros((len(rows), longest), dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            out[i, : row.numel()] = row
            attn[i, : row.numel()] = 1
        return out, attn

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def _gap_metrics(seqs: list[_Seq]) -> dict[str, float]:
        trainer = torch.cat([s.trainer_logprobs for s in seqs])
        rollout = torch.cat([s.rollout_logprobs for s in seqs])
        mask = torch.cat([s.loss_mask for s in seqs])
        return logprob_gap_metrics(trainer, rollout, mask)

    # ------------------------------------------------------------------ weights out
    def engine_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The current policy under the base model's state_dict names, for `Engine.update_weights`.

        LoRA: each adapted weight is W + scale * B @ A, computed fresh (the training model keeps its
        adapters). Full fine-tuning: the live parameters (detached; the engine copies them).
        """
        if self.is_lora:
            yield from merged_base_weights(self.model)
        else:
            for name, tensor in self.model.state_dict().items():
                yield name, tensor.detach()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str | Path, *, step: int, extra_state: dict[str, Any] | None = None) -> Path:
        """Write `<directory>/global_step_<step>/` atomically, then keep the newest `max_checkpoints_to_keep`.

        Contents: `adapter/` (peft adapter, safetensors) for LoRA or `model.safetensors` + `config.json`
        for full fine-tuning; `optimizer.pt`, `scheduler.pt`, `trainer_state.pt` (RNG states, step);
        `meta.json` with `extra_state` (the loop's data position; JSON-serialisable).
        """
        with atomic_checkpoint(directory, step, dict(extra_state or {})) as tmp:
            if self.is_lora:
                self.model.save_pretrained(tmp / "adapter")
            else:
                save_model(self.model, str(tmp / "model.safetensors"))
                if hasattr(self.model, "config"):
                    self.model.config.to_json_file(str(tmp / "config.json"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"rng": capture_rng_state(), "global_step": self.global_step}, tmp / "trainer_state.pt")
        prune_checkpoints(directory, self.cfg.max_checkpoints_to_keep or 0)
        return checkpoint_dir(directory, step)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler and RNG from a checkpoint folder (or the latest one in a
        folder of checkpoints).

        Returns the `extra_state` saved with it.
        """
        path = Path(path)
        if not (path / "meta.json").is_file():
            latest = latest_checkpoint(path)
            if latest is None:
                raise FileNotFoundError(f"no complete checkpoint at {path}")
            path = latest
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(str(path / "adapter" / "adapter_model.safetensors"), device=str(self.device)))
        else:
            missing, unexpected = load_model(self.model, str(path / "model.safetensors"), strict=False, device=str(self.device))
            if unexpected or missing:
                raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing} unexpected={unexpected}")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.global_step = int(state["global_step"])
        restore_rng_state(state["rng"])
        return read_meta(path)["extra_state"]
