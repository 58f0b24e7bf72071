"""Every setting of a training run in one dataclass, checked when it is made, saved with each checkpoint.

A :class:`TrainConfig` is what a checkpoint's ``config.json`` records under ``"train"`` and what a resumed
run is compared with (:mod:`minimind_edu.resume`), so it holds plain values only: a preset name or a
:class:`~minimind_edu.model.ModelConfig`, numbers, strings and file paths. Like ``ModelConfig`` it refuses a
bad value or an unknown key by name, and is copied with ``dataclasses.replace``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .corpus import check_format
from .device import check_precision
from .model import ModelConfig, get_preset
from .sharding import check_strategy


@dataclass
class TrainConfig:
    """Everything one training run needs. ``model`` is a preset name or a :class:`ModelConfig`."""

    model: str | ModelConfig = "course-cpu"
    batch_size: int = 16  # sequences per micro-batch, per rank
    seq_len: int = 256
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000  # optimizer steps; not used with time_budget_min (the clock decides)
    time_budget_min: float | None = None  # train this long (±1 step): the cosine follows the time left (train.py)
    probe_steps: int = 4  # with a time budget: the step time is the upper median of the last probe_steps steps
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine floor
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    precision: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32"
    device: str = "auto"  # "auto" (cuda, else cpu) | "cpu" | "cuda" | "cuda:N" | "mps"
    batch_kind: str = "packed"  # "packed" windows (no padding) | "padded" (one document per row)
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 10
    log_every: int = 10
    save_every: int = 500  # 0: only at the end
    keep_last: int = 2
    out_dir: str | None = "runs/course-cpu"  # None: keep nothing on disk
    seed: int = 0
    compile: bool = False  # torch.compile (falls back to eager where it cannot run); its compile time is one-off
    train_data: str | list[str] | None = None  # None: the shipped corpus
    valid_data: str | list[str] | None = None  # None: shipped valid files, or a held-out doc range of train_data
    valid_fraction: float = 0.02
    strategy: str = "ddp"  # under torchrun: "ddp" | "zero1" (AdamW state sharded) | "fsdp" (all sharded)
    data_format: str = "auto"  # "auto" (by content) | "text" | "jsonl": how the data files are read
    tokenizer_dir: str | None = None  # None: the course tokenizer (cache_dir()/tokenizer)
    progress: bool = True  # tqdm bar
    measure_mfu: bool = True  # on CPU this measures the matmul peak once (about 2 s)

    def __post_init__(self) -> None:
        self.validate()

    def model_config(self) -> ModelConfig:
        if isinstance(self.model, ModelConfig):
            return self.model
        if isinstance(self.model, dict):
            return ModelConfig.from_dict(self.model)
        return get_preset(self.model)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the run cannot work as configured."""
        positive = ("batch_size", "seq_len", "grad_accum_steps", "max_steps", "log_every", "keep_last", "eval_batches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.time_budget_min is not None and not 0 < self.time_budget_min < math.inf:
            raise ValueError(f"time_budget_min must be a positive finite number, got {self.time_budget_min}")
        for name, value in (("lr", self.lr), ("min_lr", self.min_lr), ("weight_decay", self.weight_decay),
                            ("grad_clip", self.grad_clip), ("betas", self.betas[0]), ("betas", self.betas[1])):
            if not math.isfinite(value):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {value}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        check_format(self.data_format)
        check_strategy(self.strategy)
        check_precision(self.precision, allow_auto=True)
        if self.batch_kind not in ("packed", "padded"):
            raise ValueError(f'batch_kind must be "packed" or "padded", got {self.batch_kind!r}')
        max_positions = self.model_config().max_position_embeddings
        if self.seq_len > max_positions:
            raise ValueError(f"seq_len={self.seq_len} exceeds the model's max_position_embeddings={max_positions}")

    def to_dict(self) -> dict:
        d = asdict(self) if not isinstance(self.model, ModelConfig) else {**asdict(self), "model": self.model.to_dict()}
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict`; a key that is not a field is refused with its name."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig.from_dict(d["model"])
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)
