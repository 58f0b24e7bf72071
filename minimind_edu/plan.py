"""How long will it take? A pretraining plan from arithmetic: will it fit, how big a batch, how many hours.

Time is work divided by speed. The work is known exactly: FLOPs per token (:mod:`minimind_edu.flops`) times
the tokens to train on. The speed is the GPU's datasheet peak times the fraction a training step reaches of
it, the MFU, which depends on the card, the model size, the kernels and the data loader; this module does not
guess it but takes it as an assumption and prints it beside the answer, so a learner can put in their own
measured figure (``benchmarks/train_speed_gpu.py`` measures it on a GPU). Memory comes from the estimator.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .data import tokenize_files
from .errors import InvalidArgument, positive
from .flops import gpu_peak_flops, training_flops_per_token
from .memory import GPUCard, estimate_step, get_gpu, largest_batch_for
from .memory_measure import StepSpec
from .model import ModelConfig

DEFAULT_MFU = 0.35  # an assumption for planning, shown in every plan, never a measurement


@dataclass(frozen=True)
class TrainingPlan:
    """One pretraining run on ``gpus`` cards, worked out from FLOPs, an assumed MFU and the memory estimate."""

    spec: StepSpec
    card: GPUCard
    tokens: int  # tokens in one pass over the data
    epochs: float
    fits: bool
    largest_batch: int
    flops_per_token: int
    peak_flops: float  # one card's dense datasheet peak in the run's precision
    mfu: float

    @property
    def tokens_per_s(self) -> float:
        """All GPUs together: each reaches ``mfu`` of its peak."""
        return self.spec.world_size * self.mfu * self.peak_flops / self.flops_per_token

    @property
    def steps(self) -> int:
        """Optimizer steps for ``epochs`` passes (each step: batch x seq tokens on every GPU, x accumulation)."""
        per_step = self.spec.batch_size * self.spec.seq_len * self.spec.grad_accum_steps * self.spec.world_size
        return math.ceil(self.epochs * self.tokens / per_step)

    @property
    def seconds(self) -> float:
        return self.epochs * self.tokens / self.tokens_per_s

    def format(self) -> str:
        s = self.spec
        gpus = f"{s.world_size} x {self.card.name}" + (f" ({s.strategy})" if s.world_size > 1 else "")
        verdict = "fits" if self.fits else "does NOT fit"
        return "\n".join([
            f"{gpus}, batch {s.batch_size} x {s.seq_len} tokens per GPU, {s.precision}: {verdict}; largest batch "
            f"per GPU that fits: {self.largest_batch}",
            f"work: {self.flops_per_token / 1e6:,.1f} MFLOP per token x {self.tokens:,} tokens x {self.epochs:g} "
            f"epoch(s) = {self.flops_per_token * self.tokens * self.epochs:.3g} FLOP",
            f"speed: {self.mfu:.0%} MFU (an assumption: measure yours with benchmarks/train_speed_gpu.py) of "
            f"{self.peak_flops / 1e12:,.1f} TFLOP/s per GPU = {self.tokens_per_s:,.0f} tokens/s",
            f"time: {self.seconds / 3600:.2f} h ({self.steps:,} optimizer steps)",
        ])


def count_tokens(paths: Sequence[str | os.PathLike], tokenizer_dir: str | os.PathLike | None = None) -> int:
    """Tokens in corpus files with a tokenizer (tokenized once, streamed and cached like training data)."""
    return tokenize_files(list(paths), tokenizer_dir, progress=True).n_tokens


def plan_training(model_config: ModelConfig, spec: StepSpec, gpu: str | GPUCard | float, tokens: int,
                  epochs: float = 1.0, mfu: float = DEFAULT_MFU) -> TrainingPlan:
    """Plan ``epochs`` passes over ``tokens`` tokens of ``spec`` (per GPU, ``spec.world_size`` GPUs) on ``gpu``."""
    if tokens < 1:
        raise InvalidArgument("tokens", f"must be at least 1, got {tokens}")
    positive("epochs", epochs)
    if not 0 < mfu <= 1:
        raise InvalidArgument("mfu", f"must be in (0, 1], got {mfu:g}")
    card = get_gpu(gpu)
    spec = replace(spec, device="cuda")
    peak = gpu_peak_flops(card.name, spec.precision)
    if peak is None:
        raise InvalidArgument("gpu", f"{card.name}: its peak FLOP/s in {spec.precision} is not in the course's table "
                              "(minimind_edu.flops.GPU_PEAK_TFLOPS); choose a listed card")
    est = estimate_step(model_config, spec, card)
    return TrainingPlan(spec, card, tokens, epochs, est.fits(card), largest_batch_for(model_config, spec, card),
                        training_flops_per_token(model_config, spec.seq_len), peak, mfu)
