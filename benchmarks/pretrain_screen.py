"""A quick screen of CPU pretraining settings, 3 minutes each, to choose which get a full-budget run.

    python benchmarks/pretrain_screen.py [--minutes 3] [--only NAME ...] [--out results.jsonl]

A full-budget comparison (``benchmarks/pretrain_sweep.py``) costs 14 minutes per setting, so candidates are
first screened for a few minutes each: batch size and learning rate, a narrower model, and the training mix
(without the Chinese prose, or with the verse read twice). Each is one ``run_pretrain`` with a time budget,
eager (torch.compile's minute of compiling would take a third of a 3-minute run). A short run favours settings
that learn fast early, so the screen only chooses what to run in full; the sweep decides the default. Every
result is appended to ``--out`` as one JSON line, with the machine's bf16 matmul rate measured just before,
because machines of this kind differ by 2x in speed from one session to the next. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from pretrain_sweep import Setting, run_setting

from minimind_edu.model import PRESETS, ModelConfig

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_screen_cpu.jsonl"
# a narrower course-cpu: about 0.6x its FLOPs per token
PRESETS.setdefault("course-cpu-192", ModelConfig(hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2,
                                                 max_position_embeddings=2048))

# all eager and 256 tokens long: what differs is the batch, the learning rate, the width and the mix
CANDIDATES = [
    Setting("16 x 256, lr 1e-3", batch=16, lr=1e-3),
    Setting("16 x 256, lr 3e-3", batch=16, lr=3e-3),
    Setting("8 x 256, lr 2e-3", batch=8, lr=2e-3),
    Setting("8 x 256, lr 3e-3", batch=8, lr=3e-3),
    Setting("4 x 256, lr 2e-3", batch=4, lr=2e-3),
    Setting("hidden 192, 16 x 256, lr 2e-3", batch=16, lr=2e-3, preset="course-cpu-192"),
    Setting("8 x 256, lr 2e-3, without the prose", batch=8, lr=2e-3, mix={"zh-prose": 0}),
    Setting("8 x 256, lr 2e-3, verse twice", batch=8, lr=2e-3, mix={"zh-verse": 2}),
]


def screen(candidate: Setting, minutes: float, folder: Path) -> dict:
    """One candidate's line of the results file: the sweep's measurements, without the curve."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    r = run_setting(candidate, minutes, folder)
    return {"candidate": r.pop("setting"), "minutes": minutes, "load_average_1min_before": load,
            **{k: v for k, v in r.items() if k != "val_curve_minutes_loss"},
            "measured_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="time budget of each candidate")
    parser.add_argument("--only", nargs="*", default=None, help="names (or a prefix) of the candidates to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines file the results are appended to")
    args = parser.parse_args(argv)
    chosen = [c for c in CANDIDATES if args.only is None or any(c.name.startswith(p) for p in args.only)]
    if not chosen:
        parser.error(f"--only matched no candidate; the candidates are: {[c.name for c in CANDIDATES]}")
    results = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, candidate in enumerate(chosen):
            r = screen(candidate, args.minutes, Path(tmp) / f"run{i}")
            results.append(r)
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
            bpb = " / ".join(f"{v:.3f}" for v in r["bits_per_byte"].values())
            print(f"{candidate.name}: {r['steps']} steps, {r['tokens']:,} tokens, val loss {r['val_loss']:.3f}, "
                  f"bits/byte {bpb} (matmul {r['bf16_matmul_gflops_before']} GFLOP/s)", flush=True)
    return results


if __name__ == "__main__":
    main()
