"""Which CPU pretraining setting learns most per minute: each setting trains for the same time budget.

    python benchmarks/pretrain_sweep.py [--minutes 14] [--only NAME ...] [--out benchmarks/results/pretrain_sweep_cpu]

Every setting is one ``minimind-edu pretrain`` run (``run_pretrain``, the same code as ``make pretrain``) with a
time budget, so each gets the same wall-clock minutes and the cosine schedule ends when its time does. The first
five differ from the earlier default (course-cpu, 16 x 256, lr 1e-3, eager) in one respect each: the learning
rate, the sequence length at the same tokens per step, torch.compile, the model size. The next two are the
3-minute screen's winner (``benchmarks/pretrain_screen.py``), eager and compiled; the compiled one is the
default, and the last two change it in one respect each: a higher learning rate, the verse read twice. The one
with the lowest validation loss sets ``choose_setup``'s CPU default. Results of separate invocations
(``--only``) are merged by name, each with the machine's bf16 matmul rate measured just before it (machines of
this kind differ by 2x from one session to the next). Reported per setting: the validation loss over time (the
curves), the final validation loss, and bits per byte by text type on the shipped validation text. Run it on a
quiet machine: the settings are compared by what they reach in equal time, so other jobs on the cores would
decide the ranking. Results: ``<out>.json`` and ``<out>.png``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from minimind_edu.corpus import DEFAULT_TEXT_TYPES, data_dir
from minimind_edu.flops import measure_cpu_matmul_flops
from minimind_edu.pretrain import DEFAULT_CPU_MINUTES, PretrainOptions, run_pretrain

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_sweep_cpu"


@dataclass(frozen=True)
class Setting:
    name: str
    preset: str = "course-cpu"
    batch: int = 16
    seq: int = 256
    lr: float = 1e-3
    compile: bool = False
    # how many times each text type's training files are read (missing: once; 0: left out)
    mix: dict[str, int] = field(default_factory=dict)


SETTINGS = [
    Setting("16 x 256, lr 1e-3 (the earlier default)"),
    Setting("lr 3e-3", lr=3e-3),
    Setting("8 x 512 (same tokens per step)", batch=8, seq=512),
    Setting("torch.compile", compile=True),
    Setting("minimind2-small (26M), 8 x 256", preset="minimind2-small", batch=8),
    # the winner of the 3-minute screen (benchmarks/pretrain_screen.py), without and with torch.compile
    Setting("8 x 256, lr 2e-3", batch=8, lr=2e-3),
    Setting("8 x 256, lr 2e-3, torch.compile", batch=8, lr=2e-3, compile=True),
    # the default (the row above) with a higher peak learning rate: lr 3e-3 edged out 1e-3 at 16 x 256
    Setting("8 x 256, lr 3e-3, torch.compile", batch=8, lr=3e-3, compile=True),
    # the default with the verse read twice: more verse tokens in the same time (benchmarks/pretrain_targets.py
    # checks against it that a text type's bits per byte follow the tokens of that type seen)
    Setting("8 x 256, lr 2e-3, torch.compile, verse twice", batch=8, lr=2e-3, compile=True, mix={"zh-verse": 2}),
]
# settings that differ only in torch.compile: what compiling costs and gains (``compile_payback``)
COMPILE_PAIRS = [("16 x 256, lr 1e-3 (the earlier default)", "torch.compile"),
                 ("8 x 256, lr 2e-3", "8 x 256, lr 2e-3, torch.compile")]


def training_files(mix: dict[str, int]) -> list[str] | None:
    """The shipped training files with each text type repeated as ``mix`` says (None: the default corpus)."""
    if not mix:
        return None
    return [str(data_dir() / name) for kind, names in DEFAULT_TEXT_TYPES["train"].items()
            for _ in range(mix.get(kind, 1)) for name in names]


def run_setting(setting: Setting, minutes: float, folder: Path) -> dict:
    data = training_files(setting.mix)
    valid = [str(data_dir() / name) for names in DEFAULT_TEXT_TYPES["valid"].values() for name in names]
    options = PretrainOptions(preset=setting.preset, batch=setting.batch, seq=setting.seq, lr=setting.lr,
                              compile=setting.compile, minutes=minutes, device="cpu", out=str(folder),
                              samples=0, progress=False, data=data, valid_data=valid if data else None)
    # The same setting runs at half the speed on a machine that multiplies matrices at half the rate, and such
    # machines differ by 2x or more from one session to the next: each result says how fast this one was.
    matmul = measure_cpu_matmul_flops(torch.bfloat16)
    started = time.perf_counter()
    summary = run_pretrain(options, out=io.StringIO())
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed_s"] / 60, r["val_loss"]) for r in records if r.get("val_loss") is not None]
    return {"setting": asdict(setting), "bf16_matmul_gflops_before": round(matmul / 1e9),
            "wall_seconds_including_setup": round(wall, 1), "steps": summary["step"],
            "tokens": summary["tokens"], "train_seconds": round(summary["seconds"], 1),
            "val_loss": summary.get("val_loss"), "val_curve_minutes_loss": curve,
            "bits_per_byte": {k: v["bits_per_byte"] for k, v in summary["by_text_type"].items()}}


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        minutes, losses = zip(*r["val_curve_minutes_loss"]) if r["val_curve_minutes_loss"] else ((), ())
        ax.plot(minutes, losses, "o-", markersize=3, label=f"{r['setting']['name']}: {r['val_loss']:.3f}")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss reached per CPU-minute, equal time budgets")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def compile_payback(eager: dict, compiled: dict) -> dict:
    """What torch.compile costs and gains, from an eager and a compiled run of one setting: both evaluate every
    100 steps, so their curves' minutes are at the same steps. The compiled run's pace is taken after its first
    evaluation (compiling is done by then); the time it took to reach that first evaluation beyond that pace is
    the compiling; the speed-up is the ratio of the paces (evaluations included in both)."""
    e = [m for m, _ in eager["val_curve_minutes_loss"]]
    c = [m for m, _ in compiled["val_curve_minutes_loss"]]
    eager_pace, compiled_pace = (e[-1] - e[0]) / (len(e) - 1), (c[-1] - c[0]) / (len(c) - 1)
    compile_s = (c[0] - compiled_pace) * 60
    speedup = eager_pace / compiled_pace
    return {"eager": eager["setting"]["name"], "compiled": compiled["setting"]["name"],
            "compile_seconds": round(compile_s, 1), "step_speedup": round(speedup, 3),
            "pays_back_after_minutes": round(compile_s / 60 / (1 - 1 / speedup), 1)}


def selects(pattern: str, name: str) -> bool:
    """``--only`` matches a whole name, or else the start of one (``"8 x 256, lr 2e-3"`` is one setting only)."""
    if pattern in {s.name for s in SETTINGS}:
        return pattern == name
    return name.startswith(pattern)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=DEFAULT_CPU_MINUTES, help="time budget of each setting")
    parser.add_argument("--only", nargs="*", default=None, help="names (or a prefix) of the settings to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results path without suffix (.json, .png)")
    args = parser.parse_args(argv)
    chosen = [s for s in SETTINGS if args.only is None or any(selects(p, s.name) for p in args.only)]
    if not chosen:
        parser.error(f"--only matched no setting; the settings are: {[s.name for s in SETTINGS]}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(chosen):
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            results.append(run_setting(setting, args.minutes, Path(tmp) / f"run{i}"))
            r = results[-1]
            r["measured_at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            r["load_average_1min_before"] = load
            print(f"{setting.name}: {r['steps']} steps, {r['tokens']:,} tokens in {r['train_seconds'] / 60:.1f} min, "
                  f"val loss {r['val_loss']:.3f}, bits/byte {r['bits_per_byte']}", flush=True)
    report = {"what": "pretraining settings on the CPU, each for the same time budget", "minutes": args.minutes,
              "results": results, "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "updated_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["results"] = merged_results(args.out.with_suffix(".json"), results, args.minutes)
    by_name = {r["setting"]["name"]: r for r in report["results"]}
    report["compile_payback"] = [compile_payback(by_name[e], by_name[c]) for e, c in COMPILE_PAIRS
                                 if e in by_name and c in by_name]
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report["results"], args.out.with_suffix(".png"))
    return results


def merged_results(path: Path, new: list[dict], minutes: float) -> list[dict]:
    """The new results with those of earlier runs of this sweep at the same budget (a setting run again is
    replaced), in SETTINGS order, so that the settings can be run one session at a time. Each keeps its own
    ``measured_at_utc`` and load average."""
    earlier = json.loads(path.read_text()) if path.exists() else {}
    by_name = {}
    if earlier.get("minutes") == minutes:
        for r in earlier.get("results", []):
            r.setdefault("measured_at_utc", earlier.get("measured_at_utc"))
            r.setdefault("load_average_1min_before", earlier.get("load_average_1min_before"))
            by_name[r["setting"]["name"]] = r
    by_name.update({r["setting"]["name"]: r for r in new})
    order = [s.name for s in SETTINGS]
    return sorted(by_name.values(), key=lambda r: order.index(r["setting"]["name"]) if r["setting"]["name"] in order
                  else len(order))


if __name__ == "__main__":
    main()
