"""The optimizer side of training: the schedule, which weights decay, and which AdamW kernel runs."""
from __future__ import annotations

import pytest
import torch

from minimind_edu import optim
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.optim import lr_at, make_optimizer, optimizer_by_name, param_groups


def test_schedule_worked_examples():
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak: step 0 already learns
    assert lr_at(4, **kw) == pytest.approx(5e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)  # warmup ends at the peak
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(5.5e-4)  # half way down: (1e-3 + 1e-4) / 2
    # a quarter of the way: 1e-4 + 9e-4 * (1 + cos(pi / 4)) / 2 = 1e-4 + 9e-4 * 0.853553 = 8.68198e-4
    assert lr_at(35, **kw) == pytest.approx(8.68198e-4, rel=1e-5)
    assert lr_at(110, **kw) == pytest.approx(1e-4) and lr_at(500, **kw) == pytest.approx(1e-4)  # the floor
    assert lr_at(0, 1e-3, 1e-4, 0, 100) == pytest.approx(1e-3)  # no warmup


def test_weight_decay_only_on_matrices():
    model = MiniMind(get_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # tiny: 2 blocks x 7 matrices (q, k, v, o, gate, up, down) + the tied embedding / LM head, listed once
    assert len(decay["params"]) == 15
    assert len(no_decay["params"]) == 5  # two norms per block and the final norm
    # every parameter exactly once: embedding 6400 x 64 = 409,600; per block q, o 64 x 64 + k, v 64 x 32
    # (12,288) + SwiGLU 3 x 64 x 192 (36,864) + 2 norms (128) = 49,280, twice; final norm 64: 508,224
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == 508_224


def test_optimizer_is_fused_adamw_on_cpu_and_matches_the_loop(monkeypatch):
    def steps(opt_model, optimizer, n=5):
        gen = torch.Generator().manual_seed(1)
        for _ in range(n):
            ids = torch.randint(3, 256, (2, 16), generator=gen)
            opt_model(ids, ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return torch.cat([p.detach().flatten() for p in opt_model.parameters()])

    torch.manual_seed(0)
    model = MiniMind(get_preset("tiny"))
    fused = make_optimizer(model, 1e-3)
    assert fused.defaults["fused"] is True  # pyproject pins torch>=2.4, which has the CPU kernel
    assert optim.adamw_implementation("cpu") == optim.adamw_implementation("cuda") == "fused"
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    w_fused = steps(model, fused)
    # Without a fused kernel (torch < 2.4 on CPU) the trainer falls back to PyTorch's per-tensor loop.
    monkeypatch.setattr(optim, "fused_adamw_supported", lambda device_type: False)
    torch.manual_seed(0)
    model = MiniMind(get_preset("tiny"))
    loop = make_optimizer(model, 1e-3)
    assert not loop.defaults["fused"] and optim.adamw_implementation("cpu") == "forloop"
    assert optim.adamw_implementation("cuda") == "foreach"
    w_loop = steps(model, loop)
    # the same update up to fp32 rounding (measured ~1e-7 after 20 steps)
    assert (w_fused - w_loop).abs().max() < 1e-5


def test_optimizers_by_name():
    model = MiniMind(get_preset("tiny"))
    assert optimizer_by_name(model, "adamw").defaults["fused"] is True  # the trainer's own
    assert optimizer_by_name(model, "adamw-foreach").defaults["foreach"] is True
    assert optimizer_by_name(model, "adamw-forloop").defaults["foreach"] is False
    assert optimizer_by_name(model, "sgd").defaults["momentum"] == 0.9
    assert optimizer_by_name(model, "none") is None
    with pytest.raises(ValueError, match="optimizer must be one of adamw, .*; got 'adam'"):
        optimizer_by_name(model, "adam")
