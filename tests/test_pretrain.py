"""Pretraining's choices: the model and batch for a device, the run's length, and the options' checks."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minimind_edu.data import TokenData
from minimind_edu.errors import InvalidArgument
from minimind_edu.pretrain import (
    COMPILE_MIN_MINUTES,
    DEFAULT_CPU_MINUTES,
    DEFAULT_GPU_MINUTES,
    PretrainOptions,
    choose_setup,
    compile_by_default,
    plan_schedule,
    steps_for_epochs,
)


def test_steps_for_epochs_worked_example():
    data = TokenData(np.arange(1001, dtype=np.uint16), np.array([0, 1001]))
    # 1001 tokens -> 1000 predictions -> 15 windows of 64; 2 epochs at 4 windows per step -> ceil(30 / 4) = 8
    assert steps_for_epochs(data, 2.0, batch_size=4, seq_len=64) == 8
    assert steps_for_epochs(data, 2.0, batch_size=2, seq_len=64, grad_accum_steps=2) == 8
    with pytest.raises(ValueError, match="epochs"):
        steps_for_epochs(data, 0, 4, 64)


def test_choose_setup():
    cpu = choose_setup("cpu")
    assert (cpu.preset, cpu.batch_size, cpu.seq_len) == ("course-cpu", 8, 256)  # the sweep's winner
    assert cpu.lr == 2e-3 and f"{cpu.batch_size} x {cpu.seq_len}" in cpu.why
    gpu = choose_setup("cuda")
    assert (gpu.preset, gpu.seq_len, gpu.lr) == ("minimind2-small", 512, 1e-3)


def test_compile_only_where_it_pays_back():
    # about a minute of compiling, then faster steps: worth it for the default budgets, not for short runs
    assert compile_by_default(DEFAULT_CPU_MINUTES) and compile_by_default(DEFAULT_GPU_MINUTES)
    assert compile_by_default(COMPILE_MIN_MINUTES) and not compile_by_default(COMPILE_MIN_MINUTES - 0.5)
    assert not compile_by_default(None)  # a run set by steps or epochs: its length in time is unknown


def test_plan_schedule_defaults_match_make_pretrain():
    # What notebook 05 (full mode) and `make pretrain` share: a time budget, on a CPU and on a GPU.
    # Planning only names the device (no GPU is needed): "cuda" is any GPU, "mps" any other accelerator.
    data = SimpleNamespace(n_tokens=32 * 100 + 1)  # exactly 100 windows of 32 tokens
    assert plan_schedule("cpu", data, 4, 32) == {"time_budget_min": DEFAULT_CPU_MINUTES, "eval_every": 100,
                                                 "save_every": 250}
    assert DEFAULT_GPU_MINUTES < DEFAULT_CPU_MINUTES  # a GPU does not make the learner wait longer
    for device in ("cuda", "cuda:1", "mps"):
        assert plan_schedule(device, data, 4, 32) == {"time_budget_min": DEFAULT_GPU_MINUTES, "eval_every": 100,
                                                      "save_every": 250}
        assert plan_schedule(device, data, 4, 32, world_size=2)["time_budget_min"] == DEFAULT_GPU_MINUTES
        assert plan_schedule(device, data, 4, 32, minutes=3)["time_budget_min"] == 3


def test_plan_schedule_overrides_on_any_device():
    data = SimpleNamespace(n_tokens=32 * 100 + 1)
    for device in ("cpu", "cuda"):
        # 2 epochs of 100 windows, 4 per step: 50 steps, evaluated every 50 // 20, saved every 50 // 10
        assert plan_schedule(device, data, 4, 32, epochs=2) == {"max_steps": 50, "eval_every": 2, "save_every": 5,
                                                                "warmup_steps": 5}
        assert plan_schedule(device, data, 4, 32, epochs=2, world_size=2)["max_steps"] == 25  # own rows per rank
        assert plan_schedule(device, data, 4, 32, epochs=1)["max_steps"] == 25
        assert plan_schedule(device, data, 4, 32, steps=7, minutes=3)["max_steps"] == 7  # steps come first
        assert plan_schedule(device, data, 4, 32, epochs=1, minutes=3)["max_steps"] == 25  # then epochs
        assert "time_budget_min" not in plan_schedule(device, data, 4, 32, steps=7)


def test_options_name_the_bad_argument(tmp_path):
    cases = [
        (dict(batch=0), "batch must be at least 1, got 0"),
        (dict(warmup=-1), "warmup must be at least 0, got -1"),
        (dict(minutes=0.0), "minutes must be a positive finite number, got 0"),
        (dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
        (dict(lr=float("inf")), "lr must be a positive finite number, got inf"),
        (dict(steps=3, minutes=1.0), "minutes cannot be combined with steps"),
        (dict(preset="gpt5"), "preset 'gpt5' is unknown; choose one of: minimind2-small"),
        (dict(precision="int8"), "precision must be one of auto, bf16, fp16, fp32"),
        (dict(valid_data=[str(tmp_path)]), f"valid_data {tmp_path}: is a folder"),
        (dict(data=[str(tmp_path / "missing.txt")]), "data " + str(tmp_path / "missing.txt") + ": no such file"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            PretrainOptions(**kwargs)
        assert str(err.value).startswith(message), (kwargs, str(err.value))
        if isinstance(err.value, InvalidArgument):  # the command line prints it as the flag
            assert str(err.value) == f"{err.value.argument} {err.value.detail}"
