"""Training speed on this machine: tokens/s and MFU of the course's training step, as ratios measured in one run.

    python benchmarks/train_speed.py                          # minimind2-small, 8 x 512, bf16, on the CPU
    python benchmarks/train_speed.py --preset course-cpu --batch 16 --seq 256
    python benchmarks/train_speed.py --profile                # plus torch.profiler's top operators

Each round measures, back to back, three things on the same device:
  * the matmul peak: the best of a few 2048^3 matmuls in the run's precision (what MFU divides by),
  * a *reference* step: the plain textbook step (autocast forward, backward, torch's default AdamW: the
    per-tensor loop on CPU, foreach on CUDA),
  * the *trainer* step: ``minimind_edu.train.Trainer.train_step``, the step the notebooks and
    ``minimind-edu pretrain`` actually run (parameter groups, gradient clipping, lr schedule, ...).
On a shared machine absolute speeds swing with the load; the per-round ratios (trainer vs peak, trainer vs
reference) are much steadier, so the JSON reports the median and the range of each over the rounds.

FLOPs per token are ``minimind_edu.flops.flops_per_token``: 6 x matmul weights + 12 L T H d for attention.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from minimind_edu import flops
from minimind_edu.data import TokenData
from minimind_edu.device import autocast
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.train import Trainer
from minimind_edu.train_config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_tokens(vocab_size: int, n_tokens: int, seed: int = 0) -> TokenData:
    """Random token ids as one long document: speed does not depend on what the tokens say."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab_size, size=n_tokens, dtype=np.int64).astype(np.uint16)
    return TokenData(tokens, np.array([0, n_tokens], dtype=np.int64), "<synthetic>", int(tokens.max()))


def make_reference_step(preset: str, batch: int, seq: int, precision: str, device: torch.device):
    """The plain step everyone writes first: same model, default AdamW, no clipping, no schedule."""
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = MiniMind(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, cfg.vocab_size, (batch, seq + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step() -> float:
        with autocast(device, precision):
            loss = model(inputs, targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.optimizer = optimizer
    return step


def adamw_kernel(optimizer: torch.optim.Optimizer) -> str:
    """Which AdamW implementation ``optimizer`` runs: "fused", "foreach" or the per-tensor "forloop"."""
    d = optimizer.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach") is False:
        return "forloop"
    if d.get("foreach"):
        return "foreach"
    params = [p for g in optimizer.param_groups for p in g["params"]]  # foreach=None: PyTorch decides per device
    return "foreach" if params and params[0].device.type == "cuda" else "forloop"


def make_trainer(preset: str, batch: int, seq: int, precision: str, device: torch.device, compile_model: bool,
                 steps: int) -> Trainer:
    cfg = get_preset(preset)
    data = synthetic_tokens(cfg.vocab_size, batch * seq * (steps + 2) + 1)
    train_cfg = TrainConfig(model=preset, batch_size=batch, seq_len=seq, precision=precision, device=str(device),
                            out_dir=None, progress=False, measure_mfu=False, compile=compile_model,
                            max_steps=steps, warmup_steps=1)
    return Trainer(train_cfg, train_data=data)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(step_fn, top: int = 20) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def cpu_name() -> str:
    """The CPU's model name and its bf16 instruction sets (what makes bf16 autocast fast or slow)."""
    name = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        name += " (" + ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) + ")"
    except (OSError, StopIteration):
        pass
    return name


def best_of(rounds: list[dict], flops_per_token: int) -> dict:
    peak = max(row["matmul_peak_flops"] for row in rounds)
    best = {"matmul_peak_flops": peak}
    for who in ("reference", "trainer"):
        tps = max(row[f"{who}_tokens_per_s"] for row in rounds)
        best[f"{who}_tokens_per_s"] = tps
        best[f"{who}_mfu"] = flops.mfu(tps, flops_per_token, peak)
    return best


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision
    cfg = get_preset(args.preset)
    fpt = flops.flops_per_token(cfg, args.seq)
    tokens_per_step = args.batch * args.seq

    reference = make_reference_step(args.preset, args.batch, args.seq, precision, device)
    trainer = make_trainer(args.preset, args.batch, args.seq, precision, device, args.compile,
                           steps=args.rounds + args.warmup + 2)
    if args.fused_adamw:  # the same parameter groups and hyperparameters, one fused kernel per tensor
        old = trainer.optimizer.param_groups
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in old]
        trainer.optimizer = torch.optim.AdamW(groups, lr=old[0]["lr"], betas=old[0]["betas"], fused=True)
    reference_adamw = adamw_kernel(reference.optimizer)

    def trainer_step() -> None:
        trainer.train_step()
        synchronize(device)

    def reference_step() -> None:
        reference()
        synchronize(device)

    for _ in range(args.warmup):  # first steps allocate, pick kernels and (with --compile) compile
        warm_ref, warm_trainer = timed(reference_step), timed(trainer_step)
        print(f"warm-up: reference {warm_ref:.2f} s, trainer {warm_trainer:.2f} s", file=sys.stderr)

    rounds = []
    for r in range(args.rounds):
        peak = flops.time_matmul_flops(precision, size=2048, repeats=3) if device.type == "cpu" else \
            flops.device_peak_flops(device, precision)
        t_ref = timed(reference_step)
        t_trainer = timed(trainer_step)
        row = {
            "matmul_peak_flops": peak,
            "reference_tokens_per_s": tokens_per_step / t_ref,
            "trainer_tokens_per_s": tokens_per_step / t_trainer,
        }
        row["reference_mfu"] = flops.mfu(row["reference_tokens_per_s"], fpt.total, peak)
        row["trainer_mfu"] = flops.mfu(row["trainer_tokens_per_s"], fpt.total, peak)
        row["trainer_vs_reference"] = t_ref / t_trainer
        rounds.append(row)
        print(f"round {r}: peak {peak / 1e9:.0f} GFLOP/s | reference {row['reference_tokens_per_s']:.0f} tok/s "
              f"(MFU {row['reference_mfu']:.1%}) | trainer {row['trainer_tokens_per_s']:.0f} tok/s "
              f"(MFU {row['trainer_mfu']:.1%}) | trainer/reference {row['trainer_vs_reference']:.2f}",
              file=sys.stderr)

    result = {
        "benchmark": "train_speed",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "precision": precision,
        "compile": args.compile,
        "fused_adamw": adamw_kernel(trainer.optimizer) == "fused",
        "trainer_adamw": adamw_kernel(trainer.optimizer),
        "reference_adamw": reference_adamw,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": {"matmul": fpt.matmul, "attention": fpt.attention, "total": fpt.total},
        "rounds": rounds,
        "summary": {key: summarize([row[key] for row in rounds]) for key in rounds[0]},
        # The least disturbed of each (fastest step, fastest matmul) over all rounds: on a busy machine the
        # per-round ratio mixes a 5-second step with a 50-ms probe; best-to-best compares like with like.
        "best": best_of(rounds, fpt.total),
        "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:]),
        "note": args.note,
    }
    if args.profile:
        table = profile_step(trainer_step)
        print(table, file=sys.stderr)
        result["profile_top_ops"] = table
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (peak, reference, trainer each)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trainer's model")
    p.add_argument("--fused-adamw", action="store_true",
                   help="force a fused AdamW on the trainer (already its default on CPU and CUDA since "
                        "make_optimizer picks it; the reference keeps PyTorch's default)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of a trainer step")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/train_speed_<device>.json)")
    p.add_argument("--note", default="", help="free text stored with the figures (e.g. 'shared busy machine')")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out) if args.out else RESULTS / f"train_speed_{torch.device(args.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    s = result["summary"]
    print(f"{args.preset} {args.batch}x{args.seq} {args.precision} on {result['device_name']} "
          f"({result['threads']} threads), median of {args.rounds} rounds; AdamW kernels: trainer "
          f"{result['trainer_adamw']}, reference {result['reference_adamw']}:")
    print(f"  trainer   {s['trainer_tokens_per_s']['median']:8.0f} tokens/s  MFU {s['trainer_mfu']['median']:.1%} "
          f"(range {s['trainer_mfu']['min']:.1%}-{s['trainer_mfu']['max']:.1%}) of the measured matmul peak "
          f"{s['matmul_peak_flops']['median'] / 1e9:.0f} GFLOP/s")
    print(f"  reference {s['reference_tokens_per_s']['median']:8.0f} tokens/s  MFU {s['reference_mfu']['median']:.1%}")
    b = result["best"]
    print(f"  best step vs best matmul over all rounds: trainer {b['trainer_tokens_per_s']:.0f} tokens/s, MFU "
          f"{b['trainer_mfu']:.1%} of {b['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; "
          f"reference MFU {b['reference_mfu']:.1%}")
    print(f"  trainer / reference speed: {s['trainer_vs_reference']['median']:.2f} "
          f"(range {s['trainer_vs_reference']['min']:.2f}-{s['trainer_vs_reference']['max']:.2f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
