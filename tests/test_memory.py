"""The memory estimator against real training steps measured on CPU, plus its worked examples and errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from minimind_edu.memory import (
    GPU_PRESETS, MiB, estimate, fits, get_gpu, largest_batch, layer_activations, measure,
)
from minimind_edu.memory_measure import StorageTracker
from minimind_edu import model as model_module
from minimind_edu.model import ModelConfig, count_parameters, get_preset


def small(hidden: int, layers: int, attention: str = "sdpa", **kw) -> ModelConfig:
    # Widths 64 (4 heads), 128 (8 heads) and one point at 256 (16 heads), all head_dim 16, vocab 6400.
    return replace(get_preset("tiny"), hidden_size=hidden, num_layers=layers, num_heads=hidden // 16, num_kv_heads=2,
                      attention=attention, max_position_embeddings=1024, **kw)


# (hidden, layers, batch, seq, attention, precision, checkpointing, extra estimate/measure options)
# Chosen so every regime is some point's peak: the cross-entropy block (most points), naive attention's
# T x T softmax backward (long sequences), checkpoint recomputation, the end of backward and the optimizer
# step (tiny batches), gradient accumulation, SGD, and PyTorch's foreach (CUDA's default) and per-tensor
# (CPU's default) AdamW kernels beside the trainer's fused one ("adamw", what every other point runs).
GRID = [
    (64, 1, 1, 32, "sdpa", "fp32", False, {}),
    (64, 8, 2, 64, "sdpa", "bf16", False, {}),
    (128, 2, 32, 32, "sdpa", "bf16", False, {}),
    (128, 3, 4, 128, "naive", "fp32", False, {}),
    (64, 2, 1, 1024, "naive", "bf16", False, {}),
    (64, 4, 8, 128, "sdpa", "bf16", True, {}),
    (128, 2, 1, 1024, "naive", "fp32", True, {}),
    (128, 1, 2, 1024, "naive", "bf16", True, {}),
    (256, 2, 1, 512, "naive", "bf16", True, {}),  # wider blocks: the first block's recomputed softmax peaks
    (64, 2, 2, 256, "sdpa", "fp32", True, {}),
    (128, 1, 2, 512, "sdpa", "bf16", False, {"grad_accum_steps": 2}),
    (64, 2, 4, 64, "sdpa", "bf16", False, {"optimizer": "sgd"}),
    (128, 8, 1, 32, "sdpa", "bf16", False, {"optimizer": "adamw-foreach"}),
    (128, 8, 1, 32, "sdpa", "bf16", False, {"optimizer": "adamw-forloop"}),
    (64, 1, 2, 64, "sdpa", "fp16", False, {}),
]


@pytest.mark.parametrize("hidden,layers,batch,seq,attention,precision,ckpt,extra", GRID)
def test_estimate_within_3_percent_of_measured(hidden, layers, batch, seq, attention, precision, ckpt, extra):
    cfg = small(hidden, layers)
    measured = measure(cfg, batch, seq, precision=precision, attention=attention, checkpointing=ckpt,
                       device="cpu", **extra)
    est = estimate(cfg, batch, seq, precision=precision, attention=attention, checkpointing=ckpt,
                   device="cpu", **extra)
    rel = abs(est.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert rel <= 0.03, (est.peak_bytes, measured.peak_bytes, est.peak_phase, measured.phase_peaks)
    # the phase the estimator names holds the measured peak (within the same tolerance)
    assert measured.phase_peaks[est.peak_phase] >= measured.peak_bytes * 0.97


def test_worked_example_fp32_one_layer():
    # Hand-derived: hidden 64, 4 heads of 16, 2 KV heads, SwiGLU 192, batch 4 x 32 tokens, fp32, AdamW.
    cfg = small(64, 1)
    n, h, inter, v = 128, 64, 192, 6400
    parts = layer_activations(cfg, 4, 32, "fp32")
    assert parts == {
        "norms": 2 * (n * 4 + n * h * 4) + 2 * n * h * 4,
        # q at all 4 heads; k, v at the 2 KV heads when sdpa reads them unrepeated (enable_gqa)
        "qkv": n * 64 * 4 + 2 * n * (32 if model_module.SDPA_HAS_GQA else 64) * 4,
        "attention": n * 64 * 4 + n * 4 * 4,
        "swiglu": 4 * n * inter * 4,
        "residual": 2 * n * h * 4,
    }
    est = estimate(cfg, 4, 32, precision="fp32")
    p = count_parameters(cfg)["total"]
    assert est.terms["weights"] == p * 4 and est.terms["optimizer_state"] == 2 * p * 4 + 4 * 11
    assert est.peak_phase == "backward"
    # the peak is backward's first step: log_softmax saved + its gradient + the logits' gradient
    assert est.transients == {"nll_loss_grad": n * v * 4, "logits_grad": n * v * 4}
    assert est.peak_bytes == sum(est.terms.values())


def test_adamw_is_the_trainers_fused_kernel_and_each_kernels_step_is_exact(monkeypatch):
    # measure() steps the trainer's own optimizer, and the estimator's optimizer phase is byte-exact for
    # every AdamW kernel: fused keeps nothing beyond weights, state and gradients, the others make sqrt(v)
    # (foreach: of the whole decayed group, every matrix; the loop: of the largest tensor, the embedding).
    from minimind_edu import memory, optim
    from minimind_edu.model import MiniMind

    cfg = small(128, 2)
    model = MiniMind(cfg)
    ours, trainers = optim.optimizer_by_name(model, "adamw"), optim.make_optimizer(model, lr=1e-4, weight_decay=0.1)
    assert ours.defaults == trainers.defaults and ours.defaults["fused"] is True
    assert [g["weight_decay"] for g in ours.param_groups] == [g["weight_decay"] for g in trainers.param_groups]
    p = count_parameters(cfg)["total"]
    expected_transient = {"adamw": 0, "adamw-fused": 0, "adamw-foreach": (p - 5 * 128) * 4, "adamw-forloop": 2 * 6400 * 128 * 4}
    for name, transient in expected_transient.items():
        est = estimate(cfg, 1, 32, optimizer=name)
        resting = sum(est.terms[k] for k in ("weights", "buffers", "batch", "optimizer_state")) + p * 4
        assert est.phase_peaks["optimizer"] == resting + transient, name
        assert measure(cfg, 1, 32, optimizer=name, device="cpu").phase_peaks["optimizer"] == resting + transient, name
    # CUDA: the trainer runs fused there too, so "adamw" models fused (unmeasured: no GPU in this course)
    assert estimate(cfg, 1, 32, device="cuda").phase_peaks["optimizer"] == \
        estimate(cfg, 1, 32, optimizer="adamw-fused", device="cuda").phase_peaks["optimizer"]
    # a torch without a fused CPU kernel: the trainer and so the estimate fall back to the per-tensor loop
    monkeypatch.setattr(optim, "fused_adamw_supported", lambda device_type: False)
    assert estimate(cfg, 1, 32).phase_peaks == estimate(cfg, 1, 32, optimizer="adamw-forloop").phase_peaks
    assert memory.estimate(cfg, 1, 32, device="cuda").transients == \
        estimate(cfg, 1, 32, optimizer="adamw-foreach", device="cuda").transients


def test_tracker_counts_storages_and_frees():
    tracker = StorageTracker()
    with tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a[:10]  # a view: same storage, nothing new
        c = torch.zeros(250, dtype=torch.float64)  # 2000 bytes
        assert tracker.live == 6000
        del a, b
        assert tracker.live == 2000
        del c
    assert tracker.live == 0 and tracker.peak == 6000


def test_memory_is_linear_in_batch_and_naive_is_quadratic_in_seq():
    cfg = get_preset("minimind2-small")
    e = [estimate(cfg, b, 256).peak_bytes for b in (16, 32, 64)]
    assert e[2] - e[1] == 2 * (e[1] - e[0])  # exactly linear in the batch
    sd = [estimate(cfg, 4, t, attention="sdpa").peak_bytes for t in (256, 512, 1024)]
    nv = [estimate(cfg, 4, t, attention="naive").peak_bytes for t in (256, 512, 1024)]
    assert sd[2] - sd[1] == 2 * (sd[1] - sd[0])  # sdpa: linear in T
    # doubling T: a linear cost doubles its increment, a quadratic one quadruples it
    assert (nv[2] - nv[1]) > 2.5 * (nv[1] - nv[0])


def test_checkpointing_and_bf16_change_what_they_should():
    cfg = get_preset("minimind2-small")
    plain = estimate(cfg, 16, 512)
    ckpt = estimate(cfg, 16, 512, checkpointing=True)
    assert ckpt.terms["activations"] == 8 * 16 * 512 * 512 * 4  # one fp32 block input per layer
    assert ckpt.peak_bytes < plain.peak_bytes
    assert estimate(cfg, 16, 512, optimizer="none").terms["optimizer_state"] == 0
    assert estimate(cfg, 16, 512, optimizer="sgd").terms["optimizer_state"] == plain.num_parameters * 4
    cuda = estimate(cfg, 16, 512, device="cuda", gpu="rtx-4090")
    assert cuda.overhead["cuda_context"] == 500 * MiB
    assert cuda.total_with_overhead == cuda.peak_bytes + sum(cuda.overhead.values())


def test_largest_batch_is_the_boundary_of_fits():
    cfg = replace(get_preset("minimind2-small"), num_layers=12)
    for card in ("rtx-4060", "rtx-4090", "a100-80gb"):
        best = largest_batch(cfg, 512, card)
        assert best > 0
        assert fits(cfg, best, 512, card) and not fits(cfg, best + 1, 512, card)
    assert largest_batch(cfg, 512, "rtx-4060") < largest_batch(cfg, 512, "rtx-4090") < largest_batch(cfg, 512, 80)
    assert not fits(cfg, 128, 512, "rtx-4090")  # the notebook's question: 12 layers, 128 x 512, 24 GB
    assert largest_batch(cfg, 512, 0.5) == 0
    assert {"rtx-3060", "rtx-4060", "rtx-4070", "rtx-4080", "rtx-3090", "rtx-4090", "rtx-4090d",
            "a100-40gb", "a100-80gb", "h100-80gb"} <= set(GPU_PRESETS)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size"),
    ({"seq_len": 5000}, "max_position_embeddings"),
    ({"precision": "int8"}, "precision"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"attention": "flash"}, "attention"),
    ({"grad_accum_steps": 0}, "grad_accum_steps"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    args = {"batch_size": 2, "seq_len": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        estimate(small(64, 1), args.pop("batch_size"), args.pop("seq_len"), **args)


def test_unmodelled_configs_and_unknown_gpu_are_refused():
    with pytest.raises(ValueError, match="MoE|measure"):
        estimate(get_preset("minimind2-moe"), 1, 64)
    with pytest.raises(ValueError, match="rtx-4090"):
        get_gpu("rtx-9999")
    assert get_gpu(24).memory_bytes == 24 * 1024 * MiB
