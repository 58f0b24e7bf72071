"""The memory grid on one CUDA GPU: allocated / reserved / driver-view peaks vs the estimate.

    python benchmarks/memory_grid_gpu.py                 # writes benchmarks/results/memory_grid_<gpu-name>.csv
    python benchmarks/memory_grid_gpu.py --dry-run       # no GPU: runs the same logic on CPU for 3 points

Same points as benchmarks/memory_grid.py (a few minutes on one GPU). On CUDA, ``measured_bytes`` is
torch.cuda.max_memory_allocated of the second training step, ``reserved_bytes`` max_memory_reserved and
``driver_bytes`` the device's used memory (what nvidia-smi shows, other processes included); the estimate
is taken with device="cuda" (the trainer's fused AdamW on both sides: measure() steps
minimind_edu.optim.make_optimizer) and its approximate overhead is written beside them, so the
constants in minimind_edu/memory.py (CUDA context, cuBLAS workspace, allocator slack) can be checked. The
estimate is taken for this GPU's compute capability, so it models the attention kernel that really runs (the
``kernel`` column: flash, efficient or math); the grid holds minimind3 and both MoE presets, bf16 and fp32, sdpa
and naive, batch and sequence sweeps (about 5 minutes on one GPU). ``minimind-edu memory --calibrate`` measures
the overheads once and the estimate uses them afterwards.
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import torch
from memory_grid import RESULTS, grid, run  # same folder

from minimind_edu.memory import GPUCard
from minimind_edu.model import get_preset

FIELDS = ["gpu", "model", "hidden", "layers", "batch", "seq_len", "attention", "precision", "checkpointing",
          "optimizer", "kernel", "estimated_bytes", "measured_bytes", "relative_error", "reserved_bytes",
          "driver_bytes", "estimated_total_with_overhead", "fits", "seconds"]


def sweeps(device: str) -> list:
    """Batch and sequence sweeps of the course's model (bf16 and fp32, sdpa and naive) on a GPU; none on CPU."""
    if device != "cuda":
        return []
    cfg = get_preset("minimind2-small")
    points = [("minimind2-small", cfg, b, 512, "sdpa", "bf16", False, "adamw") for b in (8, 16, 32, 64)]
    points += [("minimind2-small", cfg, 8, t, attention, precision, False, "adamw")
               for t in (256, 1024, 2048) for attention in ("sdpa", "naive") for precision in ("bf16", "fp32")]
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: run 3 points on CPU")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV")
    args = parser.parse_args()
    if args.dry_run:
        device, gpu_name, points = "cpu", "dry-run-cpu", grid()[:3]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a machine with a GPU, or use --dry-run")
        device, gpu_name, points = "cuda", torch.cuda.get_device_name(0), grid()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    card = None
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        card = GPUCard(gpu_name, total // 2**20, capability=torch.cuda.get_device_capability(0))
    rows = [{"gpu": gpu_name, **row} for row in run(points + sweeps(device), device, estimate_device="cuda", gpu=card)]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory_grid_{slug}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
