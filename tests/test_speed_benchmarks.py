"""The speed benchmarks run and write well-formed results (tiny sizes; no speed is asserted: timings are not tests)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cpu_benchmark_reports_ratios_from_one_run(tmp_path):
    out = tmp_path / "speed.json"
    printed = run("train_speed.py", "--preset", "tiny", "--batch", "2", "--seq", "16", "--rounds", "2",
                  "--threads", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["threads"] == 1 and len(result["rounds"]) == 2
    # 6 N + 12 L T H d for tiny at T=16: 6 * 507,904 + 12 * 2 * 16 * 64
    assert result["flops_per_token"]["total"] == 3_047_424 + 24_576
    for row in result["rounds"]:
        assert row["matmul_peak_flops"] > 0
        assert row["trainer_mfu"] == pytest.approx(row["trainer_tokens_per_s"] * 3_072_000 / row["matmul_peak_flops"])
        assert row["trainer_vs_reference"] == pytest.approx(row["trainer_tokens_per_s"] / row["reference_tokens_per_s"])
    assert result["summary"]["trainer_mfu"]["min"] <= result["summary"]["trainer_mfu"]["median"]
    assert "trainer / reference speed" in printed


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    printed = run("train_speed_gpu.py", "--dry-run", "--no-compile", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["preset"] == "tiny" and result["batch"] == 2
    (eager,) = result["variants"]
    assert eager["compile"] is False and eager["tokens_per_s"] > 0 and eager["mfu"] > 0
    assert eager["peak_memory_bytes"] is None  # only measured on a GPU
    assert result["estimated_peak_memory_bytes"] > 0
    assert "eager" in printed


def test_pretrain_sweep_merges_settings_run_in_separate_sessions(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrain_sweep import SETTINGS, merged_results
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    first, second, third = (s.name for s in SETTINGS[:3])
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"minutes": 14.0, "measured_at_utc": "then", "load_average_1min_before": 0.5,
                                "results": [{"setting": {"name": third}, "val_loss": 4.0},
                                            {"setting": {"name": first}, "val_loss": 4.2}]}))
    merged = merged_results(path, [{"setting": {"name": second}, "val_loss": 4.1},
                                   {"setting": {"name": first}, "val_loss": 4.15}], 14.0)
    assert [(r["setting"]["name"], r["val_loss"]) for r in merged] == [(first, 4.15), (second, 4.1), (third, 4.0)]
    assert merged[2]["measured_at_utc"] == "then" and merged[2]["load_average_1min_before"] == 0.5
    # results at another budget are not comparable: they are not kept
    assert [r["val_loss"] for r in merged_results(path, [{"setting": {"name": second}, "val_loss": 4.1}], 3.0)] \
        == [4.1]


def test_compile_payback_worked_example():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrain_sweep import compile_payback
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # evaluations every 100 steps: eager at 1, 2, 3 minutes (1 min per 100 steps); compiled at 1.5, 2.25, 3.0
    # (0.75 min per 100 steps once compiled, so its first 100 steps took 0.75 min more: 45 s of compiling)
    eager = {"setting": {"name": "eager"}, "val_curve_minutes_loss": [[1.0, 5.0], [2.0, 4.6], [3.0, 4.4]]}
    compiled = {"setting": {"name": "compiled"}, "val_curve_minutes_loss": [[1.5, 5.0], [2.25, 4.6], [3.0, 4.4]]}
    assert compile_payback(eager, compiled) == {"eager": "eager", "compiled": "compiled", "compile_seconds": 45.0,
                                                "step_speedup": 1.333, "pays_back_after_minutes": 3.0}


def test_pretrain_targets_worked_example():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrain_targets import analyse, fit_log_linear, shares, tokens_for
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # a text type that is a quarter of the stream; read twice it is 2/5 of it
    assert shares({"a": 300, "b": 100}) == {"a": 0.75, "b": 0.25}
    assert shares({"a": 300, "b": 100}, {"b": 2}) == {"a": 0.6, "b": 0.4}
    # bits per byte 3.0 at e^2 tokens and 2.0 at e^4: a = 4, b = -0.5 per e-fold; 1.5 is reached at e^5 tokens
    a, b = fit_log_linear([(math.exp(2), 3.0), (math.exp(4), 2.0)])
    assert (a, b) == (pytest.approx(4.0), pytest.approx(-0.5))
    assert tokens_for((a, b), 1.5) == pytest.approx(math.exp(5))
    with pytest.raises(ValueError, match="do not fall"):
        tokens_for((1.0, 0.1), 0.5)
    with pytest.raises(ValueError, match="two different token counts"):
        fit_log_linear([(10.0, 1.0), (10.0, 2.0)])
    # two runs of a two-type mix (types x and y, 1:1), 60 s and 120 s for 100 and 200 tokens (100 tokens a minute);
    # each type's bits per byte falls by 1 per e-fold of its own tokens: x from 5, y from 6 at 50 tokens seen
    runs = [{"name": name, "tokens": n, "seconds": s, "mix": {},
             "bits_per_byte": {"x": 5 - math.log(n / 100), "y": 6 - math.log(n / 100)}}
            for name, n, s in (("short", 100, 60.0), ("long", 200, 120.0))]
    # a run reading y three times: y is 3/4 of its 100 tokens, 75 seen, so 6 - ln(1.5); x: 25 seen, 5 - ln(0.5)
    check = {"name": "y thrice", "tokens": 100, "seconds": 60.0, "mix": {"y": 3},
             "bits_per_byte": {"x": 5.7, "y": 5.6}}
    report = analyse(runs, check, {"x": 1000, "y": 1000}, matmul_gflops=400.0, targets={"x": 4.0, "y": 5.0},
                     budget_minutes=1.0)
    assert report["check"]["by_text_type"]["y"]["predicted"] == pytest.approx(6 - math.log(1.5))
    assert report["check"]["by_text_type"]["x"]["predicted"] == pytest.approx(5 - math.log(0.5))
    # x reaches 4.0 at e * 50 tokens of x, y reaches 5.0 at the same: 2e * 50 tokens in all at the 1:1 mix
    need = report["both_targets"]["default mix"]["tokens"]
    assert need == pytest.approx(2 * math.e * 50)
    # at 100 tokens a minute that is 2.72 minutes here; in a 1-minute budget, a 2.72x faster machine
    assert report["both_targets"]["default mix"]["minutes_here"] == pytest.approx(need / 100)
    assert report["both_targets"]["default mix"]["matmul_gflops_for_the_budget"] == pytest.approx(400 * need / 100)


def test_a_sweep_setting_reads_each_text_type_as_often_as_its_mix_says():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrain_sweep import SETTINGS, training_files
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert training_files({}) is None  # the shipped corpus, as make pretrain reads it
    names = [Path(f).name for f in training_files({"zh-verse": 2, "zh-prose": 0})]
    assert names == ["tinystories_train.txt", "tinystories_train_more.txt", "tang_train.txt", "tang_train.txt"]
    assert {s.name: s.mix for s in SETTINGS}["8 x 256, lr 2e-3, torch.compile, verse twice"] == {"zh-verse": 2}


def test_a_runs_matmul_rate_is_read_back_from_its_metrics():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrain_targets import matmul_gflops_of_run
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from minimind_edu.flops import training_flops_per_token
    from minimind_edu.model import get_preset

    per_token = training_flops_per_token(get_preset("course-cpu"), 256)
    # 5,000 tokens/s at an mfu that puts the rate at 400 GFLOP/s; a record without mfu is skipped
    records = [{"tokens_per_s": 5000.0, "mfu": 5000.0 * per_token / 400e9}, {"tokens_per_s": 10.0, "mfu": None}]
    assert matmul_gflops_of_run(records, "course-cpu", 256) == pytest.approx(400.0)
    with pytest.raises(ValueError, match="measure_mfu=False"):
        matmul_gflops_of_run(records[1:], "course-cpu", 256)
