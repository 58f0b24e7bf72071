"""Run by tests/test_sharding.py under torchrun (2 gloo processes): each rank measures its own peak memory
of a training step under every strategy (memory_measure.measure_sharded_step); rank 0 writes all ranks' as JSON."""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from minimind_edu.distributed import ProcessGroup, leave_distributed
from minimind_edu.memory_measure import StepSpec, measure_sharded_step
from minimind_edu.model import get_preset
from minimind_edu.sharding import STRATEGIES

warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
# (hidden, layers, batch, seq, precision): weights and AdamW state a large share of the peak, where sharding shows
POINTS = [(128, 4, 2, 64, "fp32"), (128, 4, 2, 64, "bf16"), (64, 2, 4, 128, "bf16"), (256, 2, 1, 32, "fp32")]


def config(hidden: int, layers: int):
    return replace(get_preset("tiny"), hidden_size=hidden, num_layers=layers, num_heads=hidden // 16, num_kv_heads=2)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    group = ProcessGroup(dist.get_rank(), dist.get_world_size())
    rows = []
    for hidden, layers, batch, seq, precision in POINTS:
        for strategy in STRATEGIES:
            spec = StepSpec(batch, seq, precision, world_size=group.world_size, strategy=strategy)
            peak = torch.tensor([measure_sharded_step(config(hidden, layers), spec, group).peak_bytes])
            peaks = [torch.zeros(1, dtype=peak.dtype) for _ in range(group.world_size)]
            dist.all_gather(peaks, peak)
            rows.append({"point": [hidden, layers, batch, seq, precision], "strategy": strategy,
                         "peaks": [int(p) for p in peaks]})
    if group.is_main:
        out.write_text(json.dumps(rows))
    leave_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
