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
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from minimind_edu.corpus import DEFAULT_TEXT_TYPES, data_dir
from minimind_edu.flops import measure_cpu_matmul_flops
from minimind_edu.model import PRESETS, ModelConfig
from minimind_edu.pretrain import PretrainOptions, run_pretrain

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_screen_cpu.jsonl"
# a narrower course-cpu: about 0.6x its FLOPs per token
PRESETS.setdefault("course-cpu-192", ModelConfig(hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2,
                                                 max_position_embeddings=2048))


@dataclass(frozen=True)
class Candidate:
    name: str
    batch: int
    lr: float
    preset: str = "course-cpu"
    # how many times each text type's training files are read (missing: once; 0: left out)
    mix: dict[str, int] = field(default_factory=dict)


CANDIDATES = [
    Candidate("16 x 256, lr 1e-3", 16, 1e-3),
    Candidate("16 x 256, lr 3e-3", 16, 3e-3),
    Candidate("8 x 256, lr 2e-3", 8, 2e-3),
    Candidate("8 x 256, lr 3e-3", 8, 3e-3),
    Candidate("4 x 256, lr 2e-3", 4, 2e-3),
    Candidate("hidden 192, 16 x 256, lr 2e-3", 16, 2e-3, preset="course-cpu-192"),
    Candidate("8 x 256, lr 2e-3, without the prose", 8, 2e-3, mix={"zh-prose": 0}),
    Candidate("8 x 256, lr 2e-3, verse twice", 8, 2e-3, mix={"zh-verse": 2}),
]


def training_files(mix: dict[str, int]) -> list[str] | None:
    """The shipped training files with each text type repeated as ``mix`` says (None: the default corpus)."""
    if not mix:
        return None
    return [str(data_dir() / name) for kind, names in DEFAULT_TEXT_TYPES["train"].items()
            for _ in range(mix.get(kind, 1)) for name in names]


def screen(candidate: Candidate, minutes: float, folder: Path) -> dict:
    data = training_files(candidate.mix)
    valid = [str(data_dir() / name) for names in DEFAULT_TEXT_TYPES["valid"].values() for name in names]
    options = PretrainOptions(preset=candidate.preset, batch=candidate.batch, seq=256, lr=candidate.lr,
                              compile=False, minutes=minutes, device="cpu", out=str(folder), samples=0,
                              progress=False, data=data, valid_data=valid if data else None)
    matmul = measure_cpu_matmul_flops(torch.bfloat16)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    summary = run_pretrain(options, out=io.StringIO())
    return {"candidate": asdict(candidate), "minutes": minutes, "bf16_matmul_gflops_before": round(matmul / 1e9),
            "load_average_1min_before": load, "wall_seconds_including_setup": round(time.perf_counter() - started),
            "steps": summary["step"], "tokens": summary["tokens"], "val_loss": summary.get("val_loss"),
            "bits_per_byte": {k: v["bits_per_byte"] for k, v in summary["by_text_type"].items()},
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
