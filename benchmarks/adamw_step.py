"""The optimizer step alone: the trainer's AdamW (fused) against PyTorch's per-tensor loop and foreach kernels.

    python benchmarks/adamw_step.py --threads 1      # writes benchmarks/results/adamw_step_cpu.json

The three optimizers step the same parameters (minimind2-small, fixed random gradients), interleaved round
by round so a busy machine slows them alike; the JSON keeps every time and the min / median of each. The
memory side (fused makes no temporaries, the others make sqrt(v)) is in minimind_edu.memory and
tests/test_memory.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from minimind_edu.model import MiniMind, get_preset
from minimind_edu.optim import adamw_implementation, make_optimizer, param_groups

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--rounds", type=int, default=8, help="timed steps of each optimizer (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--out", default=str(RESULTS / "adamw_step_cpu.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MiniMind(get_preset(args.preset))
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    optimizers = {
        f"trainer ({adamw_implementation('cpu')})": make_optimizer(model, 1e-4),
        "forloop": torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), foreach=False),
        "foreach": torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), foreach=True),
    }
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(args.rounds + 1):  # round 0 creates the state (m, v) and is not kept
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            if r:
                times[name].append(time.perf_counter() - start)
    summary = {name: {"min_s": min(v), "median_s": statistics.median(v), "values_s": v} for name, v in times.items()}
    trainer = next(iter(summary))
    result = {
        "benchmark": "adamw_step", "preset": args.preset, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "summary": summary,
        "forloop_over_trainer_min": summary["forloop"]["min_s"] / summary[trainer]["min_s"],
        "command": "python benchmarks/adamw_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for name, s in summary.items():
        print(f"{name:18} min {s['min_s'] * 1e3:7.1f} ms   median {s['median_s'] * 1e3:7.1f} ms")
    print(f"per-tensor loop / trainer (best of {args.rounds}): {result['forloop_over_trainer_min']:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
