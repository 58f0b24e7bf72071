"""The per-GPU estimate under DDP, ZeRO-1 and FSDP2 against each rank's peak measured by the CPU storage
tracker in 2 gloo processes (tests/sharding_memory_worker.py), within 3%; and the estimate's arithmetic."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from minimind_edu.memory import estimate
from minimind_edu.memory_measure import StepSpec
from minimind_edu.memory_moments import fsdp_shard_elements, zero1_partition
from minimind_edu.model import get_preset
from minimind_edu.sharding import STRATEGIES

sys.path.insert(0, str(Path(__file__).parent))
from test_sharding import torchrun  # noqa: E402

import sharding_memory_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("memory") / "peaks.json"
    torchrun(Path(worker.__file__), str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("point", worker.POINTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_estimate_matches_each_ranks_measured_peak(measured, point, strategy):
    row = next(r for r in measured if r["point"] == list(point) and r["strategy"] == strategy)
    hidden, layers, batch, seq, precision = point
    est = estimate(worker.config(hidden, layers), batch, seq, precision=precision, world_size=2, strategy=strategy)
    peak = max(row["peaks"])  # the busiest rank: ZeRO-1's ranks hold different shares of AdamW's state
    assert abs(est.peak_bytes - peak) / peak < 0.03, (est.peak_bytes, row["peaks"])


def test_one_gpu_is_unchanged_by_the_strategy():
    cfg = get_preset("minimind2-small")
    base = estimate(cfg, 8, 512, device="cuda", gpu="rtx-3090", calibration=False)
    for strategy in STRATEGIES:
        other = estimate(cfg, 8, 512, device="cuda", gpu="rtx-3090", calibration=False, strategy=strategy)
        assert other.terms == base.terms and other.overhead == base.overhead


def test_worked_example_minimind2_small_on_two_gpus():
    """By hand: 25,829,888 parameters; DDP adds a bucket copy of the fp32 gradients (103,319,552 B); ZeRO-1
    keeps AdamW's state for its share; FSDP shards weights and state in two."""
    cfg = get_preset("minimind2-small")
    one = estimate(cfg, 8, 512, device="cuda", calibration=False)
    ddp = estimate(cfg, 8, 512, device="cuda", calibration=False, world_size=2, strategy="ddp")
    assert ddp.terms["gradient_buckets"] == 25_829_888 * 4
    assert ddp.peak_bytes == one.peak_bytes + 25_829_888 * 4
    zero1 = estimate(cfg, 8, 512, device="cuda", calibration=False, world_size=2, strategy="zero1")
    (e0, t0), (e1, t1) = zero1_partition(cfg, 2)
    assert e0 + e1 == 25_829_888 and t0 + t1 == 2 + 8 * 9  # embedding, final norm; 9 tensors per block
    assert zero1.terms["optimizer_state"] == max(8 * e0 + 4 * t0, 8 * e1 + 4 * t1)
    fsdp = estimate(cfg, 8, 512, device="cuda", calibration=False, world_size=2, strategy="fsdp")
    assert fsdp.terms["weights"] == 25_829_888 // 2 * 4  # every dim 0 is even: no padding
    assert fsdp.peak_bytes < zero1.peak_bytes < ddp.peak_bytes


def test_fsdp_pads_dim0_to_the_world_size():
    assert fsdp_shard_elements((6400, 512), 3) == 2134 * 512
    assert fsdp_shard_elements((512,), 8) == 64


@pytest.mark.parametrize("kwargs, message", [
    ({"world_size": 0}, "world_size must be at least 1"),
    ({"strategy": "zero3"}, "strategy must be one of ddp, zero1, fsdp"),
    ({"world_size": 2, "strategy": "fsdp", "optimizer": "sgd"}, "optimizer must be 'adamw'"),
])
def test_stepspec_validates_sharding(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepSpec(2, 64, **kwargs)
