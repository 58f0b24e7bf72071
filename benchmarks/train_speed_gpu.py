"""GPU training speed in one command (under 5 minutes): tokens/s, MFU and peak memory of MiniMind2-small at
batch 32 x 512 in bf16, eager and with torch.compile, using the course's own training step.

    python benchmarks/train_speed_gpu.py              # on a machine with an NVIDIA GPU
    python benchmarks/train_speed_gpu.py --dry-run    # the same logic on the CPU with the tiny preset

Writes ``benchmarks/results/train_speed_<gpu name>.json`` (a dry run writes to a temporary file unless
--out is given). MFU divides by the card's published dense bf16 peak (``minimind_edu.flops``); the peak
memory is ``torch.cuda.max_memory_allocated`` for the step, next to the estimate of ``minimind_edu.memory``.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import RESULTS, make_trainer  # noqa: E402  (the sibling benchmark's helpers)

from minimind_edu import flops  # noqa: E402
from minimind_edu.model import get_preset  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_variant(preset: str, batch: int, seq: int, device: torch.device, compile_model: bool,
                    warmup: int, steps: int) -> dict:
    """Warm up (compilation happens here), then time ``steps`` optimizer steps of the real Trainer."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = make_trainer(preset, batch, seq, "bf16", device, compile_model, steps=warmup + steps)
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    losses = [trainer.train_step()[0] for _ in range(steps)]
    sync(device)
    seconds = time.perf_counter() - start
    cfg = get_preset(preset)
    tokens_per_s = batch * seq * steps / seconds
    peak = flops.device_peak_flops(device, torch.bfloat16)
    fpt = flops.training_flops_per_token(cfg, seq)
    row = {
        "compile": compile_model,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "steps": steps,
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / steps,
        "tokens_per_s": tokens_per_s,
        "mfu": flops.mfu(tokens_per_s, fpt, peak),
        "peak_flops": peak,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "last_loss": losses[-1],
    }
    del trainer
    gc.collect()
    return row


def memory_estimate(preset: str, batch: int, seq: int, device: torch.device) -> int | None:
    try:
        from minimind_edu.memory import estimate
    except ImportError:  # the estimator is optional for this benchmark
        return None
    est = estimate(get_preset(preset), batch, seq, precision="bf16", device=device.type)
    return int(est.peak_bytes)  # comparable with torch.cuda.max_memory_allocated


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU: checks the script, not the GPU")
    p.add_argument("--preset", default=None, help="default: minimind2-small (tiny for --dry-run)")
    p.add_argument("--batch", type=int, default=None, help="default: 32 (2 for --dry-run)")
    p.add_argument("--seq", type=int, default=None, help="default: 512 (32 for --dry-run)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 30; 2 for --dry-run)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        preset, batch, seq, steps = args.preset or "tiny", args.batch or 2, args.seq or 32, args.steps or 2
        warmup = min(args.warmup, 1)
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA GPU is visible; run with --dry-run to check the script on the CPU")
        device = torch.device("cuda")
        preset, batch = args.preset or "minimind2-small", args.batch or 32
        seq, steps = args.seq or 512, args.steps or 30
        warmup = args.warmup
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"

    variants = []
    for compile_model in ([False] if args.no_compile else [False, True]):
        row = measure_variant(preset, batch, seq, device, compile_model, warmup, steps)
        variants.append(row)
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        mem = f"{row['peak_memory_bytes'] / 2**30:.2f} GiB" if row["peak_memory_bytes"] is not None else "n/a"
        print(f"{'compiled' if compile_model else 'eager   '}: {row['tokens_per_s']:10.0f} tokens/s  "
              f"{row['ms_per_step']:7.1f} ms/step  MFU {mfu}  peak memory {mem}  (warm-up {row['warmup_s']:.0f} s)")

    result = {
        "benchmark": "train_speed_gpu",
        "device_name": name,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "preset": preset,
        "batch": batch,
        "seq": seq,
        "precision": "bf16",
        "flops_per_token": flops.training_flops_per_token(get_preset(preset), seq),
        "estimated_peak_memory_bytes": memory_estimate(preset, batch, seq, device),
        "variants": variants,
        "command": "python benchmarks/train_speed_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        out = Path(args.out)
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="train_speed_gpu-")) / "train_speed_dry_run.json"
    else:
        out = RESULTS / f"train_speed_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
