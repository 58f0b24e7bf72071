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
    # Per block: q and o are 64 x 64 (4,096 each), k and v 64 x 32 (2,048 each): 12,288; SwiGLU 3 x 64 x 192 = 36,864.
    # N_matmul = 2 blocks x 49,152 + the 6400 x 64 LM head (409,600) = 507,904.
    cfg = get_preset("tiny")
    assert matmul_params(cfg) == 507_904
    f = flops_per_token(cfg, seq_len=512)
    assert f.matmul_params == 507_904
    assert f.matmul == 3_047_424  # 6 x 507,904
    assert f.attention == 786_432  # 12 x 2 layers x 512 tokens x 4 heads x 16 dims
    assert f.total == training_flops_per_token(cfg, 512) == 3_833_856  # 3,047,424 + 786,432
    assert f.forward == 1_277_952  # a third of 3,833,856
    assert flops_per_token(cfg, 512, causal=True).attention == 393_216  # half of 786,432
    assert training_flops_per_token(cfg, 512, causal=True) == 3_440_640  # 3,047,424 + 393,216


def test_minimind2_small_counts_everything_but_norms_when_tied():
    cfg = get_preset("minimind2-small")
    # Per block: q, o 512 x 512 and k, v 512 x 128 (655,360) + SwiGLU 3 x 512 x 1408 (2,162,688) = 2,818,048.
    # 8 blocks = 22,544,384, + the 6400 x 512 LM head (3,276,800) = 25,821,184:
    # the 25,829,888 parameters less the 8 x 2 x 512 + 512 = 8,704 RMSNorm gains.
    assert matmul_params(cfg) == 25_821_184
    assert count_parameters(cfg)["total"] - matmul_params(cfg) == 8_704
    # At T = 512 attention adds 12 x 8 layers x 512 x 8 heads x 64 = 25,165,824 FLOPs per token on top of
    # 6 x 25,821,184 = 154,927,104.
    assert flops_per_token(cfg, 512).attention == 25_165_824
    assert flops_per_token(cfg, 512).total == 180_092_928


def test_untied_embedding_table_costs_no_flops():
    untied = replace(get_preset("tiny"), tie_word_embeddings=False)
    # 409,600 (6400 x 64) more parameters than tiny's 508,224, but the same matmuls: the table is only indexed
    assert count_parameters(untied)["total"] == 917_824
    assert matmul_params(untied) == 507_904


def test_moe_counts_only_active_experts():
    cfg = replace(get_preset("tiny"), num_experts=4, experts_per_token=2, shared_experts=1)
    # per block: 3 active SwiGLUs (2 routed + 1 shared) of 36,864 instead of 1, plus the 64 x 4 router:
    # 12,288 + 3 x 36,864 + 256 = 123,136; 2 blocks + the 409,600 LM head = 655,872.
    # The 2 experts a token is not routed to (2 x 2 x 36,864 = 147,456 weights) cost it nothing.
    assert matmul_params(cfg) == 655_872
    assert count_parameters(cfg)["total"] - matmul_params(cfg) == 147_456 + 320  # + the norm gains, 2 x 128 + 64


# Per-token FLOPs at T = 24 (tiny, 2 layers, 4 heads x 16): attention 12 x 2 x 24 x 4 x 16 = 36,864, plus 6 N_matmul:
#   tiny, untied: N = 507,904 -> 3,047,424 + 36,864 = 3,084,288; x 48 tokens = 148,045,824
#   mha (4 KV heads): q, k, v, o all 64 x 64 -> N = 2 x (16,384 + 36,864) + 409,600 = 516,096
#                     -> 3,096,576 + 36,864 = 3,133,440; x 48 = 150,405,120
#   moe: N = 655,872 -> 3,935,232 + 36,864 = 3,972,096; x 48 = 190,660,608
@pytest.mark.parametrize(
    "overrides, flops_per_batch",
    [
        ({}, 148_045_824),
        ({"num_kv_heads": 4}, 150_405_120),
        ({"tie_word_embeddings": False}, 148_045_824),
        ({"num_experts": 4, "experts_per_token": 2}, 190_660_608),
    ],
    ids=["tiny", "mha", "untied", "moe"],
)
def test_formula_matches_pytorch_flop_counter(overrides, flops_per_batch):
    # With explicit attention every FLOP is a mm/bmm PyTorch can see: forward + backward of the real model
    # must count exactly 6 N + 12 L T H d per token (non-causal, as the naive kernel computes the full square).
    cfg = replace(get_preset("tiny"), attention="naive", **overrides)
    torch.manual_seed(0)
    model = MiniMind(cfg)
    batch, seq = 2, 24
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(ids, targets=ids).loss.backward()
    assert counter.get_total_flops() == flops_per_batch
    assert batch * seq * flops_per_token(cfg, seq).total == flops_per_batch


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
