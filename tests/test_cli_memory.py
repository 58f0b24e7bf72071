"""`minimind-edu memory`: the table, the JSON (every term in bytes, equal to estimate()), --measure, errors."""
from __future__ import annotations

import json
from dataclasses import replace

from minimind_edu.cli import main
from minimind_edu.memory import estimate
from minimind_edu.memory_measure import StepSpec
from minimind_edu.memory_report import memory_report
from minimind_edu.model import get_preset


def test_json_terms_equal_estimate(capsys):
    assert main(["memory", "--preset", "tiny", "--layers", "3", "--batch", "4", "--seq", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    est = estimate(replace(get_preset("tiny"), num_layers=3), 4, 64)
    assert out["terms"] == est.terms and out["peak_bytes"] == est.peak_bytes
    assert set(out["explanations"]) >= set(est.terms)


def test_table_with_measure_and_gpu(capsys):
    args = ["memory", "--preset", "tiny", "--batch", "2", "--seq", "32", "--precision", "fp32",
            "--attention", "naive", "--checkpointing", "--measure", "--gpu", "rtx-4060"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "peak allocated" in out and "measured peak" in out and "cuda_context" in out
    assert "fits on RTX 4060 8GB" in out and "largest batch that fits" in out
    err_line = next(line for line in out.splitlines() if line.startswith("measured peak"))
    assert abs(float(err_line.split("estimate is")[1].split("%")[0])) <= 3.0


def test_json_measure_and_hidden_override(capsys):
    assert main(["memory", "--preset", "tiny", "--hidden", "128", "--batch", "2", "--seq", "32",
                 "--measure", "--json", "--gpu", "24"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["measured"]["relative_error"]) <= 0.03
    assert out["fit"]["fits"] is True and out["fit"]["capacity_bytes"] == 25_769_803_776  # 24 x 1024 MiB


def test_the_command_prints_the_library_report(capsys):
    # the command only parses its flags: what it prints is memory_report()'s text and JSON
    cfg = replace(get_preset("tiny"), num_layers=3)
    report = memory_report(cfg, StepSpec(4, 64, optimizer="sgd", checkpointing=True), gpu="rtx-4060",
                           model_name="tiny")
    args = ["memory", "--preset", "tiny", "--layers", "3", "--batch", "4", "--seq", "64", "--optimizer", "sgd",
            "--checkpointing", "--gpu", "rtx-4060"]
    assert main(args) == 0
    assert capsys.readouterr().out == report.format() + "\n"
    assert main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report.to_dict()
    # tiny's 508,224 parameters and one more block of 49,280
    assert report.format().splitlines()[0] == \
        "tiny (557,504 parameters), batch 4 x 64 tokens, bf16, sdpa attention, optimizer sgd, checkpointing"
    assert report.estimate.device == "cuda" and report.measured is None
    assert report.format().endswith("fits on RTX 4060 8GB (8 GB); largest batch that fits at seq 64: "
                                    f"{report.largest_batch}")


def test_bad_arguments_exit_2(capsys):
    assert main(["memory", "--preset", "nope", "--batch", "2", "--seq", "32"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["memory", "--preset", "tiny", "--batch", "0", "--seq", "32"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["memory", "--preset", "tiny", "--batch", "1", "--seq", "32", "--gpu", "rtx-9999"]) == 2
    assert "--gpu 'rtx-9999' is not a known GPU" in capsys.readouterr().err


def test_a_gpu_size_that_is_not_a_positive_number_is_one_line_naming_gpu(capsys):
    for bad in ("inf", "nan", "0", "-3", "-inf"):
        # --gpu=VALUE: argparse would read "--gpu -3" as a missing value followed by an option
        assert main(["memory", "--preset", "tiny", "--batch", "1", "--seq", "32", f"--gpu={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error: --gpu must be a card's name or a positive size in GB" in err, err


def test_measure_is_refused_before_it_starts_when_the_estimate_exceeds_free_ram(capsys, monkeypatch):
    from minimind_edu import memory_report as report_module

    called = []
    monkeypatch.setattr(report_module, "measure_step", lambda *a, **k: called.append(a))
    # minimind2 at 512 x 4096 tokens: about 1.4 TiB estimated, more than any machine running the tests has
    assert main(["memory", "--preset", "minimind2", "--batch", "512", "--seq", "4096", "--measure"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--measure refused: the step is estimated at" in err
    assert "GiB of RAM available" in err and called == []


def test_every_preset_is_modelled_and_nothing_points_to_python_functions(capsys):
    from minimind_edu.model import PRESETS

    for name in PRESETS:
        assert main(["memory", "--preset", name, "--batch", "2", "--seq", "64"]) == 0
        out = capsys.readouterr().out
        assert "measure()" not in out and "attention: SDPA flash kernel" in out
    assert main(["memory", "--preset", "minimind3-moe", "--batch", "2", "--seq", "64"]) == 0
    assert "MoE routing: the estimate assumes balanced experts" in capsys.readouterr().out
    assert main(["memory", "--preset", "minimind3", "--batch", "4", "--seq", "512", "--gpu", "t4"]) == 0
    assert "SDPA math kernel" in capsys.readouterr().out  # bf16 on a T4: no fused kernel, quadratic


def test_batch_and_seq_are_required_without_calibrate(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["memory", "--preset", "tiny"])
    assert exit_.value.code == 2 and "--batch and --seq are required" in capsys.readouterr().err


def test_gpu_grid_script_dry_run_on_cpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "memory_grid_gpu.py"
    subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path)],
                   check=True, cwd=root / "benchmarks", capture_output=True, timeout=120)
    lines = (tmp_path / "memory_grid_dry-run-cpu.csv").read_text().splitlines()
    assert lines[0].startswith("gpu,model,hidden") and len(lines) == 4


def test_several_gpus_give_the_per_gpu_estimate(capsys):
    args = ["memory", "--preset", "tiny", "--layers", "3", "--batch", "4", "--seq", "64", "--json"]
    assert main([*args, "--gpus", "4", "--strategy", "fsdp"]) == 0
    out = json.loads(capsys.readouterr().out)
    est = estimate(replace(get_preset("tiny"), num_layers=3), 4, 64, world_size=4, strategy="fsdp")
    assert out["terms"] == est.terms and out["world_size"] == 4 and out["strategy"] == "fsdp"
    single = estimate(replace(get_preset("tiny"), num_layers=3), 4, 64)
    assert est.terms["weights"] < single.terms["weights"]  # FSDP keeps a quarter of the weights per GPU
    assert main([*args, "--gpus", "2", "--measure"]) == 2  # measuring is one process: not a per-GPU figure
    assert "--measure measures one process on this machine" in capsys.readouterr().err
