"""KV-cache memory of generation: the formula against a real generation on the CPU."""
from __future__ import annotations

from dataclasses import replace

import pytest

from minimind_edu.memory_inference import generation_memory, kv_cache_bytes, measure_generation
from minimind_edu.model import PRESETS, get_preset


def test_kv_cache_worked_example():
    # minimind2-small: 8 layers x 2 KV heads x head_dim 64, bf16. One token of one sequence: 2 (k and v) x 8 x 2
    # x 64 x 2 bytes = 4,096 bytes; 4 sequences of 2,048 tokens: 32 MiB. Full multi-head attention (8 KV heads)
    # would need 4 times as much.
    cfg = get_preset("minimind2-small")
    assert kv_cache_bytes(cfg, 1, 1) == 4_096
    assert kv_cache_bytes(cfg, 4, 2048) == 32 * 2**20
    assert kv_cache_bytes(replace(cfg, num_kv_heads=8), 4, 2048) == 4 * kv_cache_bytes(cfg, 4, 2048)
    assert kv_cache_bytes(cfg, 4, 2048, "fp32") == 2 * kv_cache_bytes(cfg, 4, 2048, "bf16")
    for name in PRESETS:
        assert kv_cache_bytes(get_preset(name), 1, 100) > 0
    with pytest.raises(ValueError, match="precision must be one of"):
        kv_cache_bytes(cfg, 1, 1, "int8")


@pytest.mark.parametrize("name,batch,context,precision", [
    ("tiny", 8, 256, "fp32"), ("tiny", 16, 512, "bf16"), ("minimind3", 2, 96, "bf16"),
])
def test_kv_cache_and_generation_peak_match_a_measured_generation(name, batch, context, precision):
    cfg = get_preset(name)
    measured = measure_generation(cfg, batch, context, precision)
    assert measured["kv_cache"] == kv_cache_bytes(cfg, batch, context, precision)  # exact
    estimated = generation_memory(cfg, batch, context, precision)
    assert estimated["weights"] == measured["weights"] - estimated["buffers"]
    assert abs(estimated["total"] - measured["peak"]) / measured["peak"] <= 0.03
