"""Predicted vs measured training-step memory on a grid of sizes (CPU tracker), incl. the real minimind2-small.

    python benchmarks/memory_grid.py            # writes benchmarks/results/memory_grid_cpu.{csv,png}

Today's MiniMind is in the grid too: minimind3 (QK-norm), minimind2-moe (top-2 + a shared expert),
minimind3-moe (top-1), and dropout (which on the CPU sends attention to PyTorch's math kernel).

Every point runs two real training steps (forward, backward, and the trainer's own AdamW from
minimind_edu.optim.make_optimizer, i.e. the fused kernel) and counts live tensor storages on the second; the
estimate comes from minimind_edu.memory.estimate. Two extra points step PyTorch's foreach and per-tensor
AdamW kernels instead ("adamw-foreach", "adamw-forloop"). Also timed: one estimate() call.
"""
from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

from minimind_edu.memory import estimate
from minimind_edu.memory_measure import measure
from minimind_edu.model import get_preset

RESULTS = Path(__file__).resolve().parent / "results"
PLOT_TITLE = "CPU, exact live-storage tracker (torch " + __import__("torch").__version__ + ")"
FIELDS = ["model", "hidden", "layers", "batch", "seq_len", "attention", "precision", "checkpointing",
          "optimizer", "kernel", "estimated_bytes", "measured_bytes", "relative_error", "estimated_phase", "seconds"]
REAL = ("minimind2-small", "minimind3", "minimind3+dropout", "minimind2-moe", "minimind3-moe")


def small(hidden: int, layers: int):
    return replace(get_preset("tiny"), hidden_size=hidden, num_layers=layers, num_heads=hidden // 16, num_kv_heads=2,
                      max_position_embeddings=1024)


def grid() -> list[tuple[str, object, int, int, str, str, bool, str]]:
    """(name, config, batch, seq, attention, precision, checkpointing, optimizer): 56 points."""
    points = []
    for hidden, layers in ((64, 1), (64, 4), (128, 2), (128, 8)):
        for batch, seq in ((1, 32), (8, 128), (2, 512), (32, 64)):
            for attention, precision, ckpt in (("sdpa", "bf16", False), ("naive", "fp32", True),
                                                ("sdpa", "fp32", layers % 2 == 0)):
                points.append((f"h{hidden}-l{layers}", small(hidden, layers), batch, seq, attention, precision, ckpt,
                               "adamw"))
    real = get_preset("minimind2-small")
    for batch, seq, attention, precision, ckpt, opt in (
        (2, 128, "sdpa", "bf16", False, "adamw"), (4, 256, "sdpa", "bf16", False, "adamw"),
        (2, 512, "sdpa", "bf16", True, "adamw"), (2, 256, "naive", "bf16", False, "adamw"),
        (2, 128, "sdpa", "fp32", False, "sgd"), (1, 1024, "naive", "bf16", True, "adamw"),
    ):
        points.append(("minimind2-small", real, batch, seq, attention, precision, ckpt, opt))
    # today's MiniMind: QK-norm, both MoE presets, dropout
    for name, batch, seq, attention, precision, ckpt, opt in (
        ("minimind3", 2, 256, "sdpa", "bf16", False, "adamw"), ("minimind3", 1, 512, "sdpa", "fp32", True, "adamw"),
        ("minimind3", 2, 256, "naive", "bf16", False, "adamw"),
        ("minimind2-moe", 2, 256, "sdpa", "bf16", False, "adamw"), ("minimind2-moe", 1, 128, "sdpa", "fp32", False,
                                                                    "adamw"),
        ("minimind3-moe", 2, 128, "sdpa", "bf16", False, "adamw"), ("minimind3-moe", 1, 256, "sdpa", "bf16", True,
                                                                    "sgd"),
    ):
        points.append((name, get_preset(name), batch, seq, attention, precision, ckpt, opt))
    points.append(("minimind3+dropout", replace(get_preset("minimind3"), dropout=0.1), 1, 256, "sdpa", "bf16", False,
                   "adamw"))
    # the other AdamW kernels at a short sequence, where foreach's step is the peak (the loop's step ties with
    # backward's end: both hold two embedding-sized fp32 tensors; tests/test_memory.py checks each step exactly)
    for opt in ("adamw-foreach", "adamw-forloop"):
        points.append(("h128-l8", small(128, 8), 1, 32, "sdpa", "bf16", False, opt))
    return points


def run(points, device: str, estimate_device: str | None = None, gpu=None) -> list[dict]:
    """Measure and estimate each point; ``estimate_device`` (default: ``device``) picks the estimator's model,
    ``gpu`` (a GPUCard) the attention kernel its compute capability runs.

    On CUDA the rows also carry the reserved and driver-view peaks and the estimate with its overhead."""
    rows = []
    for name, cfg, batch, seq, attention, precision, ckpt, opt in points:
        start = time.perf_counter()
        m = measure(cfg, batch, seq, precision=precision, attention=attention, checkpointing=ckpt,
                    optimizer=opt, device=device)
        e = estimate(cfg, batch, seq, precision=precision, attention=attention, checkpointing=ckpt,
                     optimizer=opt, device=estimate_device or device, gpu=gpu)
        rel = (e.peak_bytes - m.peak_bytes) / m.peak_bytes if m.fits else float("nan")
        rows.append({"model": name, "hidden": cfg.hidden_size, "layers": cfg.num_layers, "batch": batch,
                     "seq_len": seq, "attention": attention, "precision": precision, "checkpointing": ckpt,
                     "optimizer": opt, "kernel": e.kernel, "estimated_bytes": e.peak_bytes,
                     "measured_bytes": m.peak_bytes if m.fits else "",
                     "relative_error": f"{rel:.5f}", "estimated_phase": e.peak_phase,
                     "reserved_bytes": m.reserved_bytes if m.reserved_bytes is not None else "",
                     "driver_bytes": m.driver_bytes if m.driver_bytes is not None else "",
                     "estimated_total_with_overhead": e.total_with_overhead, "fits": m.fits,
                     "seconds": f"{time.perf_counter() - start:.2f}"})
        print(f"{name:16} b{batch:<3} t{seq:<5} {attention:5} {precision} ckpt={ckpt!s:5} {opt:5}  "
              f"est {e.peak_bytes / 2**20:9.1f} MiB  meas {m.peak_bytes / 2**20:9.1f} MiB  {rel:+.3%}", flush=True)
    return rows


def write(rows: list[dict], csv_path: Path, png_path: Path | None, title: str) -> None:
    for r in rows:  # relative error from the byte counts, in full precision
        if r["measured_bytes"] != "":
            r["relative_error"] = f"{(r['estimated_bytes'] - r['measured_bytes']) / r['measured_bytes']:.3e}"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["measured_bytes"] != ""]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for attention, marker in (("sdpa", "o"), ("naive", "s")):
        sel = [r for r in ok if r["attention"] == attention]
        ax.scatter([r["measured_bytes"] / 2**20 for r in sel], [r["estimated_bytes"] / 2**20 for r in sel],
                   marker=marker, label=attention, alpha=0.7)
    hi = max(r["measured_bytes"] for r in ok) / 2**20 * 1.2
    lo = min(r["measured_bytes"] for r in ok) / 2**20 / 1.2
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="estimate = measured")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("measured peak (MiB)"), ax.set_ylabel("estimated peak (MiB)")
    ax.legend()
    ax.set_title(title, fontsize=9)
    errs = [100 * float(r["relative_error"]) for r in ok]
    ax2.axhline(0, color="k", lw=0.5)
    ax2.scatter(range(len(errs)), errs, c=["C1" if r["model"] in REAL else "C0" for r in ok], s=18)
    ax2.axhline(3, color="r", lw=0.8), ax2.axhline(-3, color="r", lw=0.8)
    ax2.set_ylim(-4, 4)
    ax2.set_xlabel("grid point (orange: real presets)"), ax2.set_ylabel("relative error (%)")
    ax2.set_title(f"max |error| = {max(abs(e) for e in errs):.2g}% over {len(errs)} points (limit 3%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the first 6 points (a smoke run)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the existing CSV")
    args = parser.parse_args()
    if args.plot_only:
        with open(RESULTS / "memory_grid_cpu.csv") as f:
            rows = [{**r, "measured_bytes": int(r["measured_bytes"]), "estimated_bytes": int(r["estimated_bytes"])}
                    for r in csv.DictReader(f)]
        write(rows, RESULTS / "memory_grid_cpu.csv", RESULTS / "memory_grid_cpu.png", PLOT_TITLE)
        return
    points = grid()[:6] if args.quick else grid()
    t = time.perf_counter()
    for _ in range(1000):
        estimate(get_preset("minimind2-small"), 16, 512)
    print(f"one estimate(): {(time.perf_counter() - t) / 1000 * 1e6:.0f} us (this machine, shared CPU)")
    rows = run(points, "cpu")
    suffix = "_quick" if args.quick else ""
    write(rows, RESULTS / f"memory_grid_cpu{suffix}.csv", RESULTS / f"memory_grid_cpu{suffix}.png",
          PLOT_TITLE)
    worst = max(abs(float(r["relative_error"])) for r in rows)
    print(f"{len(rows)} points, max |relative error| = {worst:.4%}")


if __name__ == "__main__":
    main()
