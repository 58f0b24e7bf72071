"""`minimind-edu plan`: time from FLOPs per token, tokens and an assumed MFU, on worked examples."""
from __future__ import annotations

import pytest

from minimind_edu.cli import main
from minimind_edu.errors import InvalidArgument
from minimind_edu.memory_measure import StepSpec
from minimind_edu.model import get_preset
from minimind_edu.plan import plan_training


def test_worked_example_minimind2_small_on_one_3090():
    plan = plan_training(get_preset("minimind2-small"), StepSpec(32, 512, "bf16"), "rtx-3090", tokens=10**9)
    # 6 x 25,821,184 matmul weights + 12 x 8 layers x 512 tokens x 8 heads x 64 dims = 180,092,928 FLOP/token
    assert plan.flops_per_token == 180_092_928
    assert plan.peak_flops == 71.0e12  # the RTX 3090's dense bf16 tensor-core peak (Ampere GA102 whitepaper)
    # 0.35 x 71.0e12 / 180,092,928 = 137,984.3 tokens/s; 1e9 tokens / that = 7,247.2 s
    assert plan.tokens_per_s == pytest.approx(137_984.3, abs=0.1)
    assert plan.seconds == pytest.approx(7_247.2, abs=0.1)
    assert plan.steps == 61_036  # ceil(1e9 / (32 x 512))
    assert plan.fits


def test_more_gpus_divide_the_time_and_the_steps():
    one = plan_training(get_preset("minimind2-small"), StepSpec(32, 512), "rtx-4090", tokens=10**9)
    eight = plan_training(get_preset("minimind2-small"), StepSpec(32, 512, world_size=8, strategy="zero1"),
                          "rtx-4090", tokens=10**9, mfu=0.35)
    assert eight.seconds == pytest.approx(one.seconds / 8) and eight.steps == 7_630  # ceil(61,035.2 / 8)


def test_bad_plans_name_the_argument(capsys):
    with pytest.raises(InvalidArgument, match="^mfu must be in \\(0, 1\\], got 1.5"):
        plan_training(get_preset("tiny"), StepSpec(1, 32), "rtx-3090", tokens=100, mfu=1.5)
    with pytest.raises(InvalidArgument, match="not in the course's table"):
        plan_training(get_preset("tiny"), StepSpec(1, 32), 24, tokens=100)  # a bare size has no known peak
    assert main(["plan", "--tokens", "0"]) == 2
    assert "--tokens must be at least 1, got 0" in capsys.readouterr().err


def test_the_command_prints_fit_speed_and_time_with_the_assumption(capsys):
    assert main(["plan", "--preset", "minimind2-small", "--gpu", "rtx-3090", "--tokens", "1000000000"]) == 0
    out = capsys.readouterr().out
    assert "fits; largest batch per GPU that fits:" in out and "35% MFU (an assumption" in out
    assert "137,984 tokens/s" in out and "time: 2.01 h (61,036 optimizer steps)" in out
