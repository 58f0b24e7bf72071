"""The optimizer side of training: the learning-rate schedule, which weights decay, and which AdamW kernel runs.

Kept apart from the loop because two other parts of the course must agree with the trainer exactly: the
memory estimator models the kernel :func:`make_optimizer` picks (its temporaries differ by kernel), and
the memory measurement steps the very same optimizer.
"""
from __future__ import annotations

import functools
import math

import torch

# "adamw" is the trainer's optimizer (make_optimizer: fused where torch has the kernel); the other AdamW
# names force one of PyTorch's implementations, to compare their transient memory; "none" skips the step.
OPTIMIZERS = ("adamw", "adamw-fused", "adamw-foreach", "adamw-forloop", "sgd", "none")


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine down to ``min_lr``.

    Warmup: ``max_lr * (step + 1) / warmup_steps`` (never exactly 0, so step 0 already learns).
    After it: ``min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (max_steps - warmup_steps)``, clamped to [0, 1].
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear layers, the embedding); none on vectors (norm gains, biases).

    Decay pulls weights towards 0; for a norm's gain, whose natural value is 1, that only hurts.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() lists a tied matrix once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@functools.cache
def fused_adamw_supported(device_type: str) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device_type`` ("cuda": yes; "cpu": torch >= 2.4).

    Other devices (MPS, ...) get PyTorch's default: the course has not checked their fused kernels.
    """
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    try:  # torch < 2.4 refuses fused=True for CPU tensors when the optimizer is built
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def adamw_implementation(device_type: str) -> str:
    """The AdamW kernel :func:`make_optimizer` runs on ``device_type``: "fused" where supported, else
    PyTorch's default, "foreach" on CUDA and a per-tensor "forloop" elsewhere (the estimator models each)."""
    if fused_adamw_supported(device_type):
        return "fused"
    return "foreach" if device_type == "cuda" else "forloop"


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fused kernel on CPU and CUDA where this torch has one.

    Fused updates every tensor in one operator and makes no temporaries; on this course's CPU (1 thread) the
    optimizer step of minimind2-small takes 15 ms fused against 45 ms for the default per-tensor loop (best
    of 8, benchmarks/adamw_step.py), and the weights differ from the loop's only by fp32 rounding (~1e-7).
    The choice is saved with the optimizer's param groups and ``load_state_dict`` restores it, so a resumed
    run steps with the kernel its checkpoint was made with (kill-and-resume stays bit-exact).
    """
    fused = adamw_implementation(next(model.parameters()).device.type) == "fused"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused or None)


def optimizer_by_name(model: torch.nn.Module, name: str, lr: float = 1e-4) -> torch.optim.Optimizer | None:
    """One of :data:`OPTIMIZERS` over ``model``: "adamw" is exactly the trainer's (:func:`make_optimizer`),
    "adamw-<kernel>" forces that AdamW kernel, "sgd" is SGD with momentum 0.9, "none" is no optimizer."""
    if name == "adamw":
        return make_optimizer(model, lr=lr, weight_decay=0.1)
    if name in ("adamw-fused", "adamw-foreach", "adamw-forloop"):
        flags = {"adamw-fused": {"fused": True}, "adamw-foreach": {"foreach": True},
                 "adamw-forloop": {"foreach": False}}[name]
        return torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95), **flags)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "none":
        return None
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
