"""FLOPs per token, peaks and MFU: worked examples by hand, and PyTorch's own FLOP counter as a referee."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minimind_edu.flops import (
    flops_per_token,
    gpu_peak_flops,
    matmul_params,
    measure_cpu_matmul_flops,
    mfu,
    training_flops_per_token,
)
from minimind_edu.model import MiniMind, count_parameters, get_preset


def test_tiny_worked_example_by_hand():
    # tiny: hidden 64, 2 layers, 4 query heads and 2 KV heads of 16 dims, SwiGLU 192, vocab 6400, tied.
    cfg = get_preset("tiny")
    attention = 64 * 64 * 2 + 64 * 32 * 2  # q and o are 64x64; k and v are 64x32 (2 KV heads x 16)
    mlp = 3 * 64 * 192
    lm_head = 6400 * 64
    assert matmul_params(cfg) == 2 * (attention + mlp) + lm_head == 507_904
    f = flops_per_token(cfg, seq_len=512)
    assert f.matmul == 6 * 507_904 == 3_047_424
    assert f.attention == 12 * 2 * 512 * 4 * 16 == 786_432
    assert f.total == training_flops_per_token(cfg, 512) == 3_833_856
    assert flops_per_token(cfg, 512, causal=True).attention == 786_432 // 2
    assert f.forward == f.total // 3


def test_minimind2_small_counts_everything_but_norms_when_tied():
    cfg = get_preset("minimind2-small")
    norms = 8 * 2 * 512 + 512  # two RMSNorms per block plus the final one
    assert matmul_params(cfg) == count_parameters(cfg)["total"] - norms == 25_821_184
    # at T=512 attention adds 12 * 8 * 512 * 512 = 25.2M FLOPs per token on top of 6N = 154.9M
    assert flops_per_token(cfg, 512).total == 6 * 25_821_184 + 25_165_824 == 180_092_928


def test_untied_embedding_table_costs_no_flops():
    tied, untied = get_preset("tiny"), replace(get_preset("tiny"), tie_word_embeddings=False)
    # the untied model has 409,600 more parameters but the same matmuls
    assert count_parameters(untied)["total"] - count_parameters(tied)["total"] == 6400 * 64
    assert matmul_params(untied) == matmul_params(tied)


def test_moe_counts_only_active_experts():
    cfg = replace(get_preset("tiny"), num_experts=4, experts_per_token=2, shared_experts=1)
    dense = get_preset("tiny")
    swiglu = 3 * 64 * 192
    # per block: 3 active SwiGLUs (2 routed + 1 shared) instead of 1, plus the 64x4 router
    assert matmul_params(cfg) - matmul_params(dense) == 2 * (2 * swiglu + 64 * 4)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_kv_heads": 4}, {"tie_word_embeddings": False}, {"num_experts": 4, "experts_per_token": 2}],
    ids=["tiny", "mha", "untied", "moe"],
)
def test_formula_matches_pytorch_flop_counter(overrides):
    # With explicit attention every FLOP is a mm/bmm PyTorch can see: forward + backward of the real model
    # must count exactly 6 N + 12 L T H d per token (non-causal, as the naive kernel computes the full square).
    cfg = replace(get_preset("tiny"), attention="naive", **overrides)
    torch.manual_seed(0)
    model = MiniMind(cfg)
    batch, seq = 2, 24
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(ids, targets=ids).loss.backward()
    assert counter.get_total_flops() == batch * seq * flops_per_token(cfg, seq).total


def test_mfu_worked_example():
    # 2,000 tokens/s x 180.1 MFLOP/token = 360.2 GFLOP/s; against a 400 GFLOP/s peak that is 90%.
    assert mfu(2000, 180_092_928, 400e9) == pytest.approx(0.90046464)
    assert mfu(2000, 1e6, None) is None
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1, 1, 0.0)


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
        ("NVIDIA H200", "fp32", 66.9e12),
        ("NVIDIA A100-SXM4-80GB", torch.float16, 312e12),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12),
        ("NVIDIA GeForce RTX 4060", "bf16", 30.2e12),
        ("NVIDIA GeForce RTX 3060", "fp32", 12.7e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("Tesla T4", "fp16", 65e12),
        ("Tesla T4", "bf16", None),  # Turing has no bf16 tensor cores
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("NVIDIA GeForce RTX 4060 Ti", "bf16", None),  # a different chip: no guessing
        ("NVIDIA GeForce RTX 4080 SUPER", "bf16", None),
        ("NVIDIA GeForce RTX 4070 Laptop GPU", "bf16", None),
        ("NVIDIA L40S", "bf16", None),  # "L4" must not match "L40S"
        ("Some Future GPU", "bf16", None),
    ],
)
def test_gpu_peak_by_name(name, dtype, expected):
    got = gpu_peak_flops(name, dtype)
    assert got == (None if expected is None else pytest.approx(expected, rel=1e-12))


def test_gpu_peak_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        gpu_peak_flops("NVIDIA H100", "int8")


def test_cpu_probe_is_measured_once():
    first = measure_cpu_matmul_flops("fp32", size=256, repeats=2)
    assert 1e8 < first < 1e15  # a real, plausible rate for any CPU
    assert measure_cpu_matmul_flops(torch.float32, size=256, repeats=2) == first  # cached, not re-measured
