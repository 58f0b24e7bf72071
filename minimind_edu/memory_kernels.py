"""Which attention kernel runs a training step's ``scaled_dot_product_attention``, decided without running it.

Memory grows linearly in the sequence length T only when a fused kernel (flash attention, or PyTorch's
memory-efficient kernel) runs: it saves the output and one log-sum-exp per head and query. When no fused kernel
accepts the call, PyTorch silently falls back to the *math* kernel, which writes attention out in fp32 and saves
the T x T probabilities of every head: memory becomes quadratic in T. Which kernel runs depends on the dtype, the
GPU's compute capability, the head dimension, grouped K/V heads (``enable_gqa``), an explicit mask, dropout and
the PyTorch version. :func:`sdpa_kernel` states PyTorch's rules (``aten/src/ATen/native/transformers/cuda/
sdp_utils.cpp``, ``select_sdp_backend``: flash first, then memory-efficient, then math) as a pure function, so
the estimator, the explorer and a table of tests all read the same decision; :func:`training_kernel` applies
it to what ``model.Attention`` passes (the model repeats K/V itself where flash cannot take grouped heads, see
``model.flash_attention_accepts``, so that the memory-efficient kernel can run instead of the math one).

Left out on purpose: cuDNN attention (recent PyTorch with cuDNN >= 9.15 tries it first on H100/H200/B200; it
also saves O(T) and takes grouped heads, so for memory it counts as flash), ROCm, nested tensors, and the
memory-efficient kernel's grouped-head support that PyTorch's main branch gained in July 2026 (pytorch#191085):
in the releases we know (<= 2.13) only flash reads grouped K/V, so the table refuses grouped heads elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .i18n import check_language
from .memory_measure import StepSpec
from .model import SDPA_HAS_GQA, ModelConfig, flash_attention_accepts

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FUSED = ("flash", "efficient")  # kernels whose saved tensors grow linearly in T
# A GPU whose compute capability is not known is taken to be an Ampere (A100-class) card.
DEFAULT_CAPABILITY = (8, 0)


def _efficient_alignment(dtype: str, capability: tuple[int, int]) -> int:
    """The head-dim multiple the memory-efficient kernel needs (``minimum_gemm_alignment``): tensor cores read
    8 halves or 4 floats at a time; older GPUs without tensor cores for fp32 take any size."""
    half = dtype != "fp32"
    if capability >= (8, 0):
        return 8 if half else 4
    return 8 if half and capability >= (7, 0) else 1


def sdpa_kernel(dtype: str, capability: tuple[int, int] | None, head_dim: int, *, gqa: bool = False,
                mask: bool = False, dropout: float = 0.0, training: bool = True,
                torch_version: tuple[int, int] = TORCH_VERSION) -> str:
    """The kernel ``F.scaled_dot_product_attention`` picks: "flash", "efficient" or "math".

    ``dtype``: the inputs' dtype ("fp32", "bf16", "fp16"; under autocast the autocast dtype). ``capability``: the
    GPU's compute capability, e.g. (8, 9); None means the CPU. ``gqa``: k and v passed with fewer heads than q
    (``enable_gqa=True``). ``mask``: an explicit ``attn_mask`` rather than ``is_causal``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if gqa and torch_version < (2, 5):
        raise ValueError("enable_gqa needs PyTorch 2.5 or newer; repeat k and v instead")
    if capability is None:  # the CPU's fused kernel: any dtype, masks and grouped heads, but no dropout
        return "math" if dropout > 0 and training else "flash"
    if not mask and flash_attention_accepts(DTYPES[dtype], capability, head_dim, dropout, training):
        return "flash"
    efficient_dtypes = ("fp16", "fp32", "bf16") if capability >= (8, 0) else ("fp16", "fp32")
    if (not gqa and capability >= (5, 0) and dtype in efficient_dtypes
            and head_dim % _efficient_alignment(dtype, capability) == 0):
        return "efficient"
    return "math"


@dataclass(frozen=True)
class KernelChoice:
    """The attention a training step runs: ``name`` is "naive" (the course's explicit attention), "flash",
    "efficient" or "math"; ``grouped_kv`` whether k and v reach it at ``num_kv_heads`` (no repeated copies)."""

    name: str
    grouped_kv: bool

    @property
    def quadratic(self) -> bool:
        """True when the step holds T x T scores per head (naive attention, or the math kernel)."""
        return self.name not in FUSED

    def describe(self, lang: str = "en") -> str:
        """One line for the memory report and the explorer, in English or Chinese (``lang`` "en" or "zh")."""
        zh = check_language(lang) == "zh"
        if self.name == "naive":
            return ("朴素实现（显式算出 T×T 的注意力分数：随 T 二次增长）" if zh
                    else "naive attention (explicit T x T scores: quadratic in T)")
        if self.name == "math":
            return ("SDPA math 内核（没有融合内核接受这次调用：以 fp32 保存 T×T 的分数，随 T 二次增长）" if zh
                    else "SDPA math kernel (no fused kernel accepts this call: fp32 T x T scores, quadratic in T)")
        return f"SDPA {self.name} 内核（随 T 线性增长）" if zh else f"SDPA {self.name} kernel (linear in T)"


def training_kernel(cfg: ModelConfig, spec: StepSpec, capability: tuple[int, int] | None = None,
                    torch_version: tuple[int, int] = TORCH_VERSION) -> KernelChoice:
    """What ``model.Attention`` runs in a training step ``spec`` of ``cfg``. On CUDA ``capability`` is the
    GPU's (None: :data:`DEFAULT_CAPABILITY`); on the CPU it is ignored."""
    attention = spec.attention or cfg.attention
    fewer_kv_heads = cfg.num_heads > cfg.num_kv_heads
    if attention == "naive":
        return KernelChoice("naive", False)
    has_gqa = SDPA_HAS_GQA if torch_version == TORCH_VERSION else torch_version >= (2, 5)
    if spec.device == "cpu":
        grouped = fewer_kv_heads and has_gqa
        return KernelChoice(sdpa_kernel(spec.precision, None, cfg.head_dim, gqa=grouped, dropout=cfg.dropout,
                                        torch_version=torch_version), grouped)
    cap = capability or DEFAULT_CAPABILITY
    grouped = fewer_kv_heads and has_gqa and flash_attention_accepts(DTYPES[spec.precision], cap, cfg.head_dim,
                                                                     cfg.dropout, True)
    return KernelChoice(sdpa_kernel(spec.precision, cap, cfg.head_dim, gqa=grouped, dropout=cfg.dropout,
                                    torch_version=torch_version), grouped)
