"""What the CPU pretraining targets of issue 15 need, worked out from measured runs: tokens of each text type.

    python benchmarks/pretrain_targets.py [--out benchmarks/results/pretrain_targets_cpu.json]

The model reads the training stream in random windows, so each text type is seen in proportion to its share of
the stream's tokens. A text type's bits per byte on its validation text falls about linearly in the logarithm
of the tokens of that type seen. This script fits that line for each type on the runs of the CPU default
(``make pretrain`` for 14 minutes, the sweep's run of the same setting, and the 32-minute run), checks it on a
run with another mix (the sweep's "verse twice": the fit predicts its bits per byte from its own shares, without
having seen it), and solves the fit for the targets: how many tokens of English stories and of verse they need,
how many tokens in all that is at the default mix and with the prose left out, how long this machine takes to
train that many, and how fast a machine would have to be to do it in the 14-minute budget.

What it does not know: the fit is a line through runs of 4 and 9.4M tokens, extended beyond them; past a few
passes over a text type the model starts to memorise it (the 32-minute run's training loss fell below its
validation loss), so the tokens needed are a lower bound. Throughput is assumed to scale with the machine's
bf16 matmul rate (its measured rate is in each result). Results: ``<out>`` (JSON), printed as a table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from minimind_edu.corpus import DEFAULT_TEXT_TYPES, data_dir
from minimind_edu.data import tokenize_files
from minimind_edu.flops import training_flops_per_token
from minimind_edu.model import get_preset
from minimind_edu.pretrain import DEFAULT_CPU_MINUTES

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"en-stories": 1.05, "zh-verse": 2.35}  # bits per byte, issue 15, 2-core CPU, 15 minutes
DEFAULT_MINUTES = DEFAULT_CPU_MINUTES
DEFAULT_NAME = "8 x 256, lr 2e-3, torch.compile"  # the CPU default's row in the sweep
CHECK_NAME = "8 x 256, lr 2e-3, torch.compile, verse twice"


def shares(tokens_per_type: dict[str, int], mix: dict[str, int] | None = None) -> dict[str, float]:
    """Each text type's share of the training stream when its files are read ``mix[type]`` times (default 1)."""
    mix = mix or {}
    weighted = {kind: n * mix.get(kind, 1) for kind, n in tokens_per_type.items()}
    total = sum(weighted.values())
    return {kind: n / total for kind, n in weighted.items()}


def fit_log_linear(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b ln(x)`` through ``(x, y)`` points; returns ``(a, b)``."""
    if len({x for x, _ in points}) < 2:
        raise ValueError("need points at two different token counts at least")
    xs = [math.log(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def predict(fit: tuple[float, float], tokens: float) -> float:
    return fit[0] + fit[1] * math.log(tokens)


def tokens_for(fit: tuple[float, float], target: float) -> float:
    """Tokens of a type at which the fitted line reaches ``target`` bits per byte."""
    a, b = fit
    if b >= 0:
        raise ValueError(f"bits per byte do not fall with more tokens in this fit (slope {b:.3f})")
    return math.exp((target - a) / b)


def matmul_gflops_of_run(records: list[dict], preset: str, seq: int) -> float:
    """The bf16 matmul rate a run's ``mfu`` was measured against (the trainer measures it once, at the first
    record): ``tokens_per_s x FLOPs per token / mfu``, the median over its records. It dates a run's machine
    when its summary predates ``peak_flops`` (e.g. the earlier ``make pretrain`` run, in git history)."""
    per_token = training_flops_per_token(get_preset(preset), seq)
    rates = sorted(r["tokens_per_s"] * per_token / r["mfu"] / 1e9 for r in records if r.get("mfu"))
    if not rates:
        raise ValueError("no record has an mfu: the run was made with measure_mfu=False")
    return rates[len(rates) // 2]


def run_point(name: str, tokens: int, seconds: float, bits_per_byte: dict[str, float],
              mix: dict[str, int] | None = None) -> dict:
    return {"name": name, "tokens": tokens, "seconds": seconds, "mix": mix or {}, "bits_per_byte": bits_per_byte}


def from_summary(name: str, path: Path) -> dict:
    """A ``minimind-edu pretrain`` run's point, from its ``summary.json``."""
    s = json.loads(path.read_text())
    return run_point(name, s["tokens"], s["seconds"], {k: v["bits_per_byte"] for k, v in s["by_text_type"].items()})


def from_sweep(row: dict) -> dict:
    """A sweep setting's point, from its row in ``pretrain_sweep_cpu.json``."""
    return run_point(f"sweep: {row['setting']['name']}", row["tokens"], row["train_seconds"], row["bits_per_byte"],
                     row["setting"].get("mix"))


def analyse(default_runs: list[dict], check: dict | None, tokens_per_type: dict[str, int], matmul_gflops: float,
            targets: dict[str, float] = TARGETS, budget_minutes: float = DEFAULT_MINUTES) -> dict:
    """Fit each type's line on ``default_runs`` (the default mix), check it on ``check`` (another mix), and solve
    it for ``targets``: the tokens needed, here in minutes, and the matmul rate that fits them in the budget."""
    base = shares(tokens_per_type)
    fits = {kind: fit_log_linear([(r["tokens"] * base[kind], r["bits_per_byte"][kind]) for r in default_runs])
            for kind in tokens_per_type}
    report: dict = {"shares_at_default_mix": base,
                    "fits": {kind: {"a": a, "b_per_e_fold": b} for kind, (a, b) in fits.items()}}
    if check is not None:
        s = shares(tokens_per_type, check["mix"])
        seen = {kind: check["tokens"] * s[kind] for kind in tokens_per_type}
        report["check"] = {"run": check["name"], "mix": check["mix"], "shares": s, "by_text_type": {
            kind: {"tokens_seen": seen[kind], "predicted": predict(fits[kind], seen[kind]),
                   "measured": check["bits_per_byte"][kind]} for kind in tokens_per_type}}
    need = {kind: tokens_for(fits[kind], target) for kind, target in targets.items()}
    # tokens per second of the runs with the budget's length, compiling included: what it buys on this machine
    budget_runs = [r for r in default_runs if abs(r["seconds"] / 60 - budget_minutes) < 0.1 * budget_minutes]
    tokens_per_s = sum(r["tokens"] / r["seconds"] for r in budget_runs) / len(budget_runs)
    at_default_mix = max(need[kind] / base[kind] for kind in need)
    # a mix of English and verse only, weighted so that each gets the tokens its target needs
    without_prose = sum(need.values())
    report["targets"] = targets
    report["tokens_needed"] = {kind: {"tokens_of_this_type": n, "at_default_mix": n / base[kind],
                                      "passes_over_its_training_text": n / tokens_per_type[kind]}
                               for kind, n in need.items()}
    report["this_machine"] = {"tokens_per_s": tokens_per_s, "tokens_in_budget": tokens_per_s * budget_minutes * 60,
                              "bf16_matmul_gflops": matmul_gflops}
    report["both_targets"] = {
        name: {"tokens": total, "minutes_here": total / tokens_per_s / 60,
               "matmul_gflops_for_the_budget": matmul_gflops * total / (tokens_per_s * budget_minutes * 60)}
        for name, total in (("default mix", at_default_mix), ("English and verse only, weighted", without_prose))}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder with the committed run results")
    parser.add_argument("--out", type=Path, default=RESULTS / "pretrain_targets_cpu.json")
    parser.add_argument("--rate-of", type=Path, metavar="METRICS_JSONL",
                        help="only print the matmul rate of a course-cpu 256-token run from its metrics.jsonl")
    args = parser.parse_args(argv)
    if args.rate_of:
        records = [json.loads(line) for line in args.rate_of.read_text().splitlines() if line.strip()]
        rate = matmul_gflops_of_run(records, "course-cpu", 256)
        print(f"{args.rate_of}: bf16 matmul rate {rate:.0f} GFLOP/s")
        return {"rate_gflops": rate}
    tokens_per_type = {kind: tokenize_files([data_dir() / f for f in files], progress=False).n_tokens
                       for kind, files in DEFAULT_TEXT_TYPES["train"].items()}
    sweep = {r["setting"]["name"]: r
             for r in json.loads((args.results / "pretrain_sweep_cpu.json").read_text())["results"]}
    default_runs = [from_summary("make pretrain, 14 min", args.results / "pretrain_course_cpu_summary.json"),
                    from_sweep(sweep[DEFAULT_NAME]),
                    from_summary("minimind-edu pretrain --minutes 32",
                                 args.results / "pretrain_course_cpu_32min_summary.json")]
    check = from_sweep(sweep[CHECK_NAME]) if CHECK_NAME in sweep else None
    # the runs were on one machine in one session; its rate, as the make pretrain run measured it
    metrics = args.results / "pretrain_course_cpu_metrics.jsonl"
    rate = matmul_gflops_of_run([json.loads(line) for line in metrics.read_text().splitlines()], "course-cpu", 256)
    report = {"what": __doc__.strip().splitlines()[0], "runs": default_runs, "tokens_per_type": tokens_per_type,
              **analyse(default_runs, check, tokens_per_type, rate),
              "updated_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for kind, fit in report["fits"].items():
        print(f"{kind}: bits/byte = {fit['a']:.3f} {fit['b_per_e_fold']:+.3f} ln(tokens of this type seen)")
    if "check" in report:
        for kind, c in report["check"]["by_text_type"].items():
            print(f"check, {report['check']['run']}, {kind}: predicted {c['predicted']:.3f}, "
                  f"measured {c['measured']:.3f}")
    for kind, n in report["tokens_needed"].items():
        print(f"{kind} <= {TARGETS[kind]}: {n['tokens_of_this_type'] / 1e6:.1f}M tokens of it "
              f"({n['passes_over_its_training_text']:.1f} passes), {n['at_default_mix'] / 1e6:.1f}M at the default mix")
    for name, b in report["both_targets"].items():
        print(f"both targets, {name}: {b['tokens'] / 1e6:.1f}M tokens = {b['minutes_here']:.0f} min here; in "
              f"{DEFAULT_MINUTES:.0f} min at {b['matmul_gflops_for_the_budget']:.0f} GFLOP/s bf16")
    return report


if __name__ == "__main__":
    main()
