"""How much arithmetic a training step does, how much the hardware could do, and the ratio (MFU).

Model FLOPs per token (the PaLM / Chinchilla convention, which nanoGPT and most MFU figures use):

    training FLOPs per token = 6 * N_matmul  +  12 * L * T * n_heads * head_dim

* ``N_matmul`` counts every weight that is multiplied by a token's activations in a matmul: the
  attention projections (q, k, v, o), the SwiGLU matrices (gate, up, down; for a mixture of experts only
  the experts a token is routed to, the shared experts and the router) and the LM head (vocab x hidden).
  A matmul with an (in x out) weight costs 2 * in * out FLOPs per token forward (a multiply and an add)
  and twice that backward (gradients for the input and for the weight): 6 per weight per token.
  Left out, because they are not matmuls: the embedding lookup (an index, 0 FLOPs) and the RMSNorm
  weights (elementwise). With tied embeddings the one vocab x hidden matrix is used once as a lookup
  (free) and once as the LM head (a matmul), so it counts once: ``N_matmul`` = all parameters minus the
  norm weights. Untied, the separate embedding table does not count. This is why we neither take
  "all parameters" (wrong when untied) nor "non-embedding parameters" (it would drop the LM head, which
  for a 6400-token vocab at hidden 512 is 3.3M of minimind2-small's 25.8M parameters and ~13% of its work).
* Attention scores ``q k^T`` and the weighted sum ``p v`` each cost 2 * T * head_dim FLOPs per head per
  token forward, for every query head (grouped-query attention shares key/value *heads*, not the
  arithmetic), so 4 * T * n_heads * head_dim forward and 3x that for forward + backward. PaLM counts the
  full T x T square even though a causal mask makes half of it useless; ``causal=True`` counts only
  the useful half (what FlashAttention-style kernels that skip masked blocks actually do).

The peak: on a GPU a table of NVIDIA's published dense (no sparsity) tensor-core figures, looked up by
the device's name, and the ratio is the MFU. On a CPU there is no trustworthy datasheet number, so we
*measure* the rate of one large matmul instead (:func:`measure_cpu_matmul_flops`) and divide by that: the
ratio is then a **CPU utilisation against a measured matmul rate** (how close training comes to this CPU's
best matmul speed), not an MFU in the datasheet sense, and not comparable with a GPU's MFU.
:func:`utilisation_label` names the ratio for a device. (The metrics records keep the key ``mfu`` for both.)
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import cache

import torch

from .device import precision_dtype, precision_name
from .model import ModelConfig


@dataclass(frozen=True)
class FlopsPerToken:
    """Training (forward + backward) FLOPs per token, split into the weight matmuls and attention."""

    matmul_params: int  # N_matmul (see the module docstring)
    matmul: int  # 6 * N_matmul
    attention: int  # 12 * L * T * n_heads * head_dim (halved when causal=True)

    @property
    def total(self) -> int:
        return self.matmul + self.attention

    @property
    def forward(self) -> int:
        """Forward pass only (one third of the training count): used for evaluation and generation."""
        return self.total // 3


def matmul_params(cfg: ModelConfig) -> int:
    """Weights a token meets in matmuls: attention + (active) MLP per block, plus the LM head."""
    h, d = cfg.hidden_size, cfg.head_dim
    attention = h * cfg.num_heads * d * 2 + h * cfg.num_kv_heads * d * 2
    swiglu = 3 * h * cfg.intermediate_size
    if cfg.num_experts:
        # A token runs through its top-k routed experts and every shared expert; the router is a matmul too.
        mlp = (cfg.experts_per_token + cfg.shared_experts) * swiglu + h * cfg.num_experts
    else:
        mlp = swiglu
    lm_head = cfg.vocab_size * h  # a matmul whether or not it shares its matrix with the embedding
    return cfg.num_layers * (attention + mlp) + lm_head


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False) -> FlopsPerToken:
    """Training FLOPs per token for sequences of ``seq_len`` tokens (see the module docstring)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    n = matmul_params(cfg)
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    if causal:
        attention //= 2
    return FlopsPerToken(matmul_params=n, matmul=6 * n, attention=attention)


def training_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False) -> int:
    """``flops_per_token(cfg, seq_len).total``: the number MFU divides by."""
    return flops_per_token(cfg, seq_len, causal).total


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Achieved model FLOPs per second / ``peak_flops``; None if the peak is unknown.

    With a GPU's datasheet peak this is the MFU (model FLOPs utilisation); with a CPU's measured matmul
    rate (:func:`device_peak_flops` on a CPU) it is a CPU utilisation against that rate (see
    :func:`utilisation_label`)."""
    if peak_flops is None:
        return None
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    if tokens_per_s < 0 or flops_per_token < 0:
        raise ValueError("tokens_per_s and flops_per_token must be >= 0")
    return tokens_per_s * flops_per_token / peak_flops


# ----------------------------------------------------------------------------------------------------------
# Peaks

# NVIDIA's published dense (no 2:4 sparsity) peaks in TFLOPS. "bf16"/"fp16" are tensor-core rates with FP32
# accumulation (what PyTorch's autocast matmuls use; GeForce cards run FP16-accumulate twice as fast, which
# PyTorch does not use); "fp32" is the plain CUDA-core rate (no TF32). None: the card has no such unit
# (Volta and Turing have no bf16 tensor cores). Sources: the A100/H100/H200/L4/T4/V100 datasheets and the
# Ampere GA102 / Ada AD102 whitepapers (GeForce rates are SMs x 512 FLOP/clock x boost clock).
GPU_PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "T4": {"bf16": None, "fp16": 65.0, "fp32": 8.1},
    "V100": {"bf16": None, "fp16": 125.0, "fp32": 15.7},
    "RTX 3060": {"bf16": 25.5, "fp16": 25.5, "fp32": 12.7},
    "RTX 3090": {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6},
    "RTX 4060": {"bf16": 30.2, "fp16": 30.2, "fp32": 15.1},
    "RTX 4070": {"bf16": 58.3, "fp16": 58.3, "fp32": 29.1},
    "RTX 4080": {"bf16": 97.5, "fp16": 97.5, "fp32": 48.7},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
}


def gpu_peak_flops(device_name: str, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of a GPU from its name (``torch.cuda.get_device_name()``), or None when unknown.

    Variants with other clocks or SM counts ("RTX 4060 Ti", "RTX 4080 SUPER", "... Laptop GPU") are not
    guessed: they return None rather than a wrong number.
    """
    key = precision_name(dtype)
    if re.search(r"\b(laptop|mobile|max-q)\b", device_name, re.IGNORECASE):
        return None
    # Longest names first so that "H100 PCIe" wins over "H100".
    for name in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        pattern = r"(?<![A-Za-z0-9])" + re.escape(name) + r"(?![A-Za-z0-9])(?!\s*(Ti|SUPER)\b)"
        if re.search(pattern, device_name, re.IGNORECASE):
            tflops = GPU_PEAK_TFLOPS[name][key]
            return None if tflops is None else tflops * 1e12
    return None


def time_matmul_flops(dtype: torch.dtype | str = torch.bfloat16, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul on the CPU, best of ``repeats`` (not cached: a fresh measurement).

    Best of several, not the mean: on a shared machine the fastest run is the one least disturbed.
    """
    key = precision_name(dtype)
    torch_dtype = precision_dtype(key)
    a = torch.randn(size, size).to(torch_dtype)
    b = torch.randn(size, size).to(torch_dtype)
    torch.mm(a, b)  # warm-up: lets oneDNN pick and cache its kernel
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@cache
def _measure_cached(dtype_key: str, size: int, repeats: int, threads: int) -> float:
    # ``threads`` is only part of the cache key: the rate changes with torch.set_num_threads.
    return time_matmul_flops(dtype_key, size, repeats)


def measure_cpu_matmul_flops(dtype: torch.dtype | str = torch.bfloat16, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one large square matmul on this CPU at the current thread count (measured once, then cached):
    the rate a CPU's utilisation is measured against, in place of a datasheet peak.

    2048 x 2048 is big enough that packing overheads vanish (one matmul is 17 GFLOP) and small enough that
    the warm-up and ``repeats`` runs take about a second or two on a laptop CPU.
    """
    return _measure_cached(precision_name(dtype), size, repeats, torch.get_num_threads())


def device_peak_flops(device: torch.device | str, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """What :func:`mfu` divides by: a GPU's datasheet peak by name (the ratio is an MFU), or this CPU's
    measured matmul rate (the ratio is a CPU utilisation against that rate, not a datasheet MFU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return measure_cpu_matmul_flops(dtype)
    return None  # mps and others: no trustworthy figure


def utilisation_label(device: torch.device | str) -> str:
    """How to name :func:`mfu`'s ratio on ``device`` in printed output: "MFU" against a GPU's datasheet peak,
    "CPU utilisation against a measured matmul rate" on a CPU (a measured rate, not a datasheet peak)."""
    if torch.device(device).type == "cpu":
        return "CPU utilisation against a measured matmul rate"
    return "MFU"
