"""The typed shape of the `ajet:` config block.

Every field mirrors a key of `default.yaml`, which is the only place defaults live: the loader always
merges the user's YAML over that file, so fields here are declared without defaults and a key set to
null (or removed by a broken default file) fails validation instead of silently taking a second,
diverging default. Documentation for each key is the comment beside it in `default.yaml`.

Sections forbid unknown keys (typos get a "did you mean" from the loader), except `task_judge`,
which keeps extra keys for user judges, and `verl` / `trinity`, free-form pass-throughs for those backbones.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from ajet.config.merge import deep_merge

# Strings the tutorials use where the user must put a model; loading one is always a mistake.
MODEL_PATH_PLACEHOLDERS = ("YOUR_MODEL_PATH",)


class Section(BaseModel):
    """Base of every config block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ModelConfig(Section):
    path: str = Field(min_length=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    chat_template: str

    @field_validator("path")
    @classmethod
    def _not_placeholder(cls, value: str) -> str:
        if value.strip() in MODEL_PATH_PLACEHOLDERS or value.strip().startswith("YOUR_"):
            raise ValueError(
                f"{value!r} is the tutorial's placeholder; set ajet.model.path to the model to train: "
                "a local model directory (e.g. /models/Qwen2.5-0.5B-Instruct), a Hugging Face hub id "
                "(e.g. Qwen/Qwen2.5-0.5B-Instruct), or builtin:smollm2-135m-instruct for a CPU-sized "
                "model that needs no download (or pass model.path=... on the command line)"
            )
        return value


class DataConfig(Section):
    train_batch_size: PositiveInt
    max_prompt_length: PositiveInt
    max_response_length: PositiveInt
    shuffle: bool
    seed: int


class MultiTurnConfig(Section):
    max_steps: PositiveInt


class ValKwargsConfig(Section):
    temperature: NonNegativeFloat
    top_p: float = Field(gt=0.0, le=1.0)
    top_k: int = Field(ge=-1)
    do_sample: bool
    num_repeat: PositiveInt


class RolloutConfig(Section):
    user_workflow: str = Field(min_length=1)
    engine: Literal["auto", "hf", "vllm"]
    num_repeat: PositiveInt
    temperature: NonNegativeFloat
    top_p: float = Field(gt=0.0, le=1.0)
    top_k: int = Field(ge=-1)
    max_env_worker: PositiveInt
    max_response_length_in_one_turn: PositiveInt
    max_model_len: PositiveInt
    episode_timeout: PositiveFloat
    max_batch_size: PositiveInt
    force_disable_toolcalls: bool
    allow_request_sampling_override: bool = False
    tensor_model_parallel_size: PositiveInt
    gpu_memory_utilization: float = Field(gt=0.0, le=1.0)
    proxy_host: str = Field(min_length=1)
    proxy_max_inflight: PositiveInt
    multi_turn: MultiTurnConfig
    val_kwargs: ValKwargsConfig


class HuggingFaceRepoConfig(Section):
    dataset_path: str | None
    dataset_name: str | None
    training_split: str
    validation_split: str | None


class FileSplitConfig(Section):
    file_path: str | None


class DatasetFileConfig(Section):
    training: FileSplitConfig
    validation: FileSplitConfig


class EnvServiceConfig(Section):
    env_type: str | None
    env_url: str | None
    training_split: str
    validation_split: str | None
    timeout: PositiveFloat


TaskReaderType = Literal["huggingface_dat_repo", "dataset_file", "env_service"]


class TaskReaderConfig(Section):
    type: TaskReaderType
    huggingface_dat_repo: HuggingFaceRepoConfig
    dataset_file: DatasetFileConfig
    env_service: EnvServiceConfig
    query_field: str = Field(min_length=1)
    answer_field: str | None
    id_field: str | None
    on_missing_field: Literal["error", "skip"]

    @model_validator(mode="before")
    @classmethod
    def _jsonl_alias(cls, data: Any) -> Any:
        # AgentJet calls the file reader `jsonl_dataset_file`; it reads .json/.parquet too, so ours
        # is `dataset_file` and the old name is accepted for both the type and the block.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("type") == "jsonl_dataset_file":
            data["type"] = "dataset_file"
        if "jsonl_dataset_file" in data:
            alias_block = data.pop("jsonl_dataset_file")
            if alias_block is not None:
                data["dataset_file"] = deep_merge(data.get("dataset_file") or {}, alias_block)
        return data

    @model_validator(mode="after")
    def _selected_reader_is_complete(self) -> TaskReaderConfig:
        if self.type == "huggingface_dat_repo" and not self.huggingface_dat_repo.dataset_path:
            raise ValueError(
                "ajet.task_reader.huggingface_dat_repo.dataset_path is required when task_reader.type is "
                "huggingface_dat_repo: a hub id (openai/gsm8k) or a local directory of <split>.jsonl files"
            )
        if self.type == "dataset_file" and not self.dataset_file.training.file_path:
            raise ValueError(
                "ajet.task_reader.dataset_file.training.file_path is required when task_reader.type is "
                "dataset_file: the path of a .jsonl, .json or .parquet file of training tasks"
            )
        if self.type == "env_service" and not self.env_service.env_url:
            raise ValueError(
                "ajet.task_reader.env_service.env_url is required when task_reader.type is env_service: "
                "the base URL of the environment service, e.g. http://127.0.0.1:8080"
            )
        return self


class LlmJudgeConfig(Section):
    enabled: bool
    base_url: str | None
    api_key_env: str
    model: str | None
    timeout: PositiveFloat


class TaskJudgeConfig(Section):
    # Extra keys stay: a user judge reads its own settings from `config.task_judge.<key>`.
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True)

    judge_protocol: str | None
    llm_judge: LlmJudgeConfig
    score_truncated_by_last_number: bool
    format_penalty: float
    behavior_penalty: float


class PythonExecutorConfig(Section):
    timeout: PositiveFloat
    cpu_seconds: PositiveInt
    memory_mb: PositiveInt
    max_output_bytes: PositiveInt
    max_concurrency: PositiveInt
    disable_network: bool


class ToolsConfig(Section):
    python_executor: PythonExecutorConfig


class LoraConfig(Section):
    lora_rank: NonNegativeInt
    lora_alpha: PositiveFloat
    lora_dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: str | list[str]


class PolicyLossConfig(Section):
    loss_mode: str = Field(min_length=1)  # a registered name (ajet.algo); checked before the run starts
    gspo_clip_ratio_low: PositiveFloat
    gspo_clip_ratio_high: PositiveFloat
    cispo_clip_ratio_low: float = Field(ge=0.0, le=1.0)
    cispo_clip_ratio_high: PositiveFloat


class FilterGroupsConfig(Section):
    enable: bool
    max_num_gen_batches: int  # <= 0: no limit (verl's convention)


class OverlongBufferConfig(Section):
    enable: bool
    len: PositiveInt
    penalty_factor: NonNegativeFloat


class AlgorithmConfig(Section):
    adv_estimator: str = Field(min_length=1)  # a registered name (ajet.algo); checked before the run starts
    norm_adv_by_std_in_grpo: bool
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
    loss_scale_factor: PositiveInt | None
    policy_loss: PolicyLossConfig
    filter_groups: FilterGroupsConfig
    overlong_buffer: OverlongBufferConfig
    mask_truncated_completions: bool

    @model_validator(mode="after")
    def _dr_grpo_uses_its_aggregation(self) -> AlgorithmConfig:
        if self.adv_estimator == "dr_grpo" and self.loss_agg_mode != "seq-mean-token-sum-norm":
            raise ValueError(
                f"ajet.trainer_common.algorithm.adv_estimator=dr_grpo needs loss_agg_mode "
                f"seq-mean-token-sum-norm (Dr. GRPO's length-independent aggregation), got "
                f"{self.loss_agg_mode!r}: pass trainer_common.algorithm.loss_agg_mode=seq-mean-token-sum-norm "
                "(or use adv_estimator=grpo with norm_adv_by_std_in_grpo=false for the advantage alone)"
            )
        return self


class OptimConfig(Section):
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    betas: tuple[float, float]
    grad_clip: PositiveFloat | None
    lr_warmup_steps: NonNegativeInt

    @field_validator("lr_warmup_steps", mode="before")
    @classmethod
    def _negative_means_none(cls, value: Any) -> Any:
        # AgentJet (and verl) write -1 for "no warmup".
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            return 0
        return value


class RolloutCorrectionConfig(Section):
    tis_cap: PositiveFloat | None
    mask_low: NonNegativeFloat | None
    mask_high: PositiveFloat | None

    @model_validator(mode="after")
    def _band_is_ordered(self) -> RolloutCorrectionConfig:
        if self.mask_low is not None and self.mask_high is not None and self.mask_low >= self.mask_high:
            raise ValueError(
                f"ajet.trainer_common.rollout_correction.mask_low ({self.mask_low}) must be below "
                f"mask_high ({self.mask_high})"
            )
        return self


class AsyncConfig(Section):
    max_staleness: NonNegativeInt
    stale_policy: Literal["drop", "wait"]


LoggerName = Literal["console", "jsonl", "swanlab"]


class TrainerCommonConfig(Section):
    total_epochs: PositiveInt
    n_gpus_per_node: NonNegativeInt  # 0: verl backbone on the CPU
    nnodes: PositiveInt
    total_training_steps: PositiveInt | None
    save_freq: NonNegativeInt
    test_freq: NonNegativeInt
    val_before_train: bool
    val_only: bool
    val_max_num_task_each_validation: PositiveInt | None
    logger: list[LoggerName]
    swanlab_mode: Literal["auto", "online", "offline", "local", "disabled"]
    experiment_dir: str = Field(min_length=1)
    resume: str = Field(min_length=1)
    max_checkpoints_to_keep: NonNegativeInt | None
    logview_episodes: NonNegativeInt
    algorithm: AlgorithmConfig
    clip_ratio_low: NonNegativeFloat
    clip_ratio_high: NonNegativeFloat
    clip_ratio_c: float | None = Field(gt=1.0)
    use_kl_loss: bool
    kl_loss_coef: NonNegativeFloat
    kl_loss_type: Literal["kl", "abs", "mse", "low_var_kl"]
    entropy_coeff: float
    ppo_epochs: PositiveInt
    mini_batch_num: PositiveInt
    micro_batch_size: PositiveInt
    gradient_checkpointing: bool
    optim: OptimConfig
    rollout_correction: RolloutCorrectionConfig
    # `async` is a Python keyword: read it as `cfg.trainer_common.async_`; YAML and dumps say `async`.
    async_: AsyncConfig = Field(alias="async")

    @model_validator(mode="after")
    def _dual_clip_is_ppo_only(self) -> TrainerCommonConfig:
        loss_mode = self.algorithm.policy_loss.loss_mode
        if self.clip_ratio_c is not None and loss_mode != "vanilla":
            raise ValueError(
                f"ajet.trainer_common.clip_ratio_c={self.clip_ratio_c} is the dual clip of the PPO loss "
                f"(policy_loss.loss_mode=vanilla); loss_mode={loss_mode!r} has none: set "
                "trainer_common.clip_ratio_c=null"
            )
        return self

    @field_validator("logger", mode="before")
    @classmethod
    def _single_logger(cls, value: Any) -> Any:
        # AgentJet writes `logger: swanlab`; a comma list is accepted for command-line overrides.
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value


class DebugConfig(Section):
    debug_first_n_tasks: PositiveInt | None
    debug_max_parallel: PositiveInt


class AjetConfig(Section):
    """The validated `ajet:` block. Attribute access mirrors the YAML (`cfg.rollout.num_repeat`)."""

    project_name: str = Field(min_length=1)
    experiment_name: str = Field(min_length=1)
    backbone: Literal["debug", "verl", "trinity"]
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig
    task_reader: TaskReaderConfig
    task_judge: TaskJudgeConfig
    tools: ToolsConfig
    lora: LoraConfig
    trainer_common: TrainerCommonConfig
    debug: DebugConfig
    # Passed through untouched to the verl backbone (verl's own config keys).
    verl: dict[str, Any] = Field(default_factory=dict)
    # Passed through to the trinity backbone (Trinity-RFT's own config keys; Trinity validates them).
    trinity: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _scale_factor_follows_response_length(cls, data: Any) -> Any:
        # `algorithm.loss_scale_factor: null` means data.max_response_length (Dr. GRPO divides by the
        # generation budget); resolved here, where both sections are in view, so the trainer and the
        # verl translation read one number and the effective config.yaml shows it.
        def section(parent: Any, key: str) -> Any:
            return parent.get(key) if isinstance(parent, dict) else None

        algorithm = section(section(data, "trainer_common"), "algorithm")
        length = section(section(data, "data"), "max_response_length")
        if isinstance(algorithm, dict) and "loss_scale_factor" in algorithm and algorithm["loss_scale_factor"] is None and length is not None:
            data = deep_merge(data, {"trainer_common": {"algorithm": {"loss_scale_factor": length}}})
        return data

    @model_validator(mode="after")
    def _algorithm_fits_the_rollout(self) -> AjetConfig:
        algorithm = self.trainer_common.algorithm
        if algorithm.filter_groups.enable and self.rollout.num_repeat < 2:
            raise ValueError(
                "ajet.trainer_common.algorithm.filter_groups.enable=true drops groups whose episodes all "
                f"scored the same, which needs groups of several episodes; ajet.rollout.num_repeat is "
                f"{self.rollout.num_repeat}: set rollout.num_repeat to 2 or more, or filter_groups.enable=false"
            )
        overlong = algorithm.overlong_buffer
        if overlong.enable and overlong.len >= self.data.max_response_length:
            raise ValueError(
                f"ajet.trainer_common.algorithm.overlong_buffer.len ({overlong.len}) must be below "
                f"ajet.data.max_response_length ({self.data.max_response_length}): the penalty ramps over the "
                "last `len` tokens before that limit"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain data, without the `ajet:` wrapper (mirrors attribute access)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """The effective config as YAML under `ajet:`; `load_config` reads it back to an equal config."""
        return yaml.safe_dump({"ajet": self.to_dict()}, sort_keys=False, allow_unicode=True)
