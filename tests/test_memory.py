"""The memory estimator against real training steps measured on CPU, plus its worked examples and errors."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from minimind_edu.errors import InvalidArgument
from minimind_edu.memory import GPU_PRESETS, GPUCard, MiB, estimate, fits, get_gpu, largest_batch
from minimind_edu.memory_measure import StepSpec, StorageTracker, measure
from minimind_edu.memory_moments import StepSizes, layer_activations, step_moments
from minimind_edu.model import PRESETS, SDPA_HAS_GQA, ModelConfig, get_preset


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


MOE2 = {"num_experts": 4, "experts_per_token": 2, "shared_experts": 1}  # MiniMind2-MoE's routing
MOE3 = {"num_experts": 4, "experts_per_token": 1, "shared_experts": 0, "qk_norm": True}  # MiniMind3-MoE's
# Today's MiniMind: QK-norm (MiniMind3), mixtures of experts (MiniMind2-MoE, MiniMind3-MoE) and dropout, first at
# small widths where activations and transients weigh, then the real presets (their step-long terms dominate at
# the batch a CPU can run). Dropout on the CPU sends sdpa to PyTorch's math kernel (fp32 T x T probabilities),
# so its points also check the math kernel's model. (config changes, batch, seq, attention, precision,
# checkpointing, extra estimate/measure options)
TODAY = [
    ({"qk_norm": True}, 8, 128, "sdpa", "bf16", False, {}),
    ({"qk_norm": True}, 2, 512, "sdpa", "fp32", True, {}),
    ({"qk_norm": True}, 1, 512, "naive", "bf16", False, {}),
    (MOE2, 8, 128, "sdpa", "bf16", False, {}),
    (MOE2, 8, 128, "sdpa", "fp32", False, {}),
    ({**MOE2, "aux_loss_per_sequence": True}, 8, 128, "sdpa", "bf16", False, {}),
    (MOE2, 2, 512, "sdpa", "bf16", True, {}),
    (MOE2, 1, 512, "naive", "bf16", False, {}),
    (MOE3, 8, 128, "sdpa", "bf16", False, {}),
    ({**MOE3, "norm_topk_prob": False}, 8, 128, "sdpa", "bf16", False, {"optimizer": "adamw-foreach"}),
    ({"dropout": 0.1}, 2, 512, "sdpa", "bf16", False, {}),
    ({"dropout": 0.1}, 1, 1024, "sdpa", "bf16", True, {}),
    ({"dropout": 0.1}, 1, 1024, "sdpa", "fp32", False, {}),
    ({"dropout": 0.1}, 1, 512, "naive", "bf16", False, {}),
    ({**MOE3, "dropout": 0.1}, 2, 256, "sdpa", "bf16", False, {}),
    ("minimind3", 2, 256, "sdpa", "bf16", False, {}),
    ("minimind2-moe", 2, 256, "sdpa", "bf16", False, {}),
    ("minimind3-moe", 2, 128, "sdpa", "bf16", False, {}),
    ("minimind3-moe", 1, 256, "sdpa", "bf16", True, {"optimizer": "sgd"}),
]


@pytest.mark.parametrize("changes,batch,seq,attention,precision,ckpt,extra", TODAY,
                         ids=[f"{c if isinstance(c, str) else '+'.join(c)}-{b}x{t}-{a}-{p}{'-ckpt' if k else ''}"
                              for c, b, t, a, p, k, _ in TODAY])
def test_todays_minimind_within_3_percent_of_measured(changes, batch, seq, attention, precision, ckpt, extra):
    cfg = get_preset(changes) if isinstance(changes, str) else small(128, 2, **changes)
    options = dict(precision=precision, attention=attention, checkpointing=ckpt, device="cpu", **extra)
    measured, est = measure(cfg, batch, seq, **options), estimate(cfg, batch, seq, **options)
    assert abs(est.peak_bytes - measured.peak_bytes) / measured.peak_bytes <= 0.03, (est.peak_bytes, measured)
    for phase, nbytes in est.phase_peaks.items():  # forward's peak holds every saved activation
        assert abs(nbytes - measured.phase_peaks[phase]) / measured.phase_peaks[phase] <= 0.03, phase
    if cfg.num_experts:  # balanced routing is assumed; every token to the same experts bounds it
        assert est.worst_routing_peak_bytes >= est.peak_bytes
    assert est.kernel == ("naive" if attention == "naive" else "math" if cfg.dropout else "flash")


def test_moe_worst_routing_bounds_the_expert_backward():
    # One routed expert per token and no shared one, wide experts and a 256-word vocabulary (so cross-entropy
    # is small): the last block's expert backward is the peak. Balanced, each of 4 experts sees 1024 / 4 = 256
    # tokens; the bound sends all 1024 to one.
    cfg = small(128, 2, intermediate_size=2048, vocab_size=256, **{**MOE3, "qk_norm": False})
    est = estimate(cfg, 2, 512, precision="fp32")
    measured = measure(cfg, 2, 512, precision="fp32", device="cpu")
    assert abs(est.peak_bytes - measured.peak_bytes) / measured.peak_bytes <= 0.03
    # the bound adds 3 intermediate-sized fp32 gradients for the 768 more tokens: 3 x 768 x 2048 x 4 at least
    assert est.worst_routing_peak_bytes - est.peak_bytes >= 3 * 768 * 2048 * 4
    assert measured.peak_bytes <= est.worst_routing_peak_bytes


def test_worked_example_fp32_one_layer():
    # Worked by hand: hidden 64, 4 heads of 16, 2 KV heads, SwiGLU 192, vocabulary 6400, 458,944 parameters;
    # batch 4 x 32 = 128 tokens, fp32, AdamW. One fp32 tensor of 128 tokens x 64 is 32,768 bytes.
    cfg = small(64, 1)
    assert layer_activations(cfg, 4, 32, "fp32") == {
        # two norms, each rsqrt (128 x 4 = 512) and its normalised output (32,768), and in fp32 the linears
        # after them save that output once more: 2 x 33,280 + 2 x 32,768
        "norms": 132_096,
        # q at 4 heads x 16 (32,768); k and v at 2 KV heads x 16 (16,384 each) when sdpa reads them unrepeated
        # (enable_gqa), else repeated to 4 heads (32,768 each)
        "qkv": 65_536 if SDPA_HAS_GQA else 98_304,
        # sdpa's output (32,768) and one fp32 log-sum-exp per head and token: 4 x 128 x 4 = 2,048
        "attention": 34_816,
        # gate, silu(gate), up and their product: 4 x 128 tokens x 192 x 4 bytes
        "swiglu": 393_216,
        # the fp32 residual stream entering each of the two norms: 2 x 32,768
        "residual": 65_536,
    }
    est = estimate(cfg, 4, 32, precision="fp32")
    assert est.terms["weights"] == 1_835_776  # 458,944 x 4
    assert est.terms["optimizer_state"] == 3_671_596  # m and v (2 x 1,835,776) and an fp32 step for 11 tensors
    # The peak is backward's start: cross-entropy's saved log_softmax (128 x 6400 x 4 = 3,276,800 bytes, in
    # the head block) with its gradient and the logits' gradient, every block's activations still saved.
    assert est.peak_phase == "backward"
    assert est.transients == {"nll_loss_grad": 3_276_800, "logits_grad": 3_276_800}
    # weights + RoPE tables (2 x 1024 x 16 x 4 = 131,072) + batch (2 x 128 x 8 = 2,048) + AdamW state
    # + one block's activations (691,200, or 32,768 more without GQA) + the head block (3,375,624) + 6,553,600
    assert est.peak_bytes == (16_260_916 if SDPA_HAS_GQA else 16_293_684)


def test_a_step_is_walked_moment_by_moment():
    # The moments that can hold a step's peak, in the order they are compared (the first wins a tie).
    cfg = get_preset("tiny")
    names = [(m.phase, m.name) for m in step_moments(StepSizes(cfg, StepSpec(2, 64)))]
    assert names == [("forward", "forward's end, in cross-entropy"), ("backward", "backward's start, in cross-entropy"),
                     ("backward", "last block's SwiGLU backward"), ("backward", "first block's SwiGLU backward"),
                     ("backward", "backward's end, the embedding's gradient"), ("optimizer", "adamw step")]
    # Naive attention adds its T x T softmax (in forward, then in the last and the first block's backward), and
    # checkpointing the recomputed softmax; without an optimizer there is no step.
    spec = StepSpec(2, 64, attention="naive", checkpointing=True, optimizer="none")
    assert [m.name for m in step_moments(StepSizes(cfg, spec))][2:7] == [
        "last block's softmax", "last block's softmax backward", "last block's recomputed softmax",
        "first block's softmax backward", "first block's recomputed softmax"]
    assert [m.phase for m in step_moments(StepSizes(cfg, spec))][-1] == "backward"


def test_adamw_is_the_trainers_fused_kernel_and_each_kernels_step_is_exact(monkeypatch):
    # measure() steps the trainer's own optimizer, and the estimator's optimizer phase is byte-exact for
    # every AdamW kernel: fused keeps nothing beyond weights, state and gradients, the others make sqrt(v)
    # (foreach: of the whole decayed group, every matrix; the loop: of the largest tensor, the embedding).
    from minimind_edu import optim
    from minimind_edu.model import MiniMind

    cfg = small(128, 2)
    model = MiniMind(cfg)
    ours, trainers = optim.optimizer_by_name(model, "adamw"), optim.make_optimizer(model, lr=1e-4, weight_decay=0.1)
    assert ours.defaults == trainers.defaults and ours.defaults["fused"] is True
    assert [g["weight_decay"] for g in ours.param_groups] == [g["weight_decay"] for g in trainers.param_groups]
    # 1,049,216 parameters: the fp32 gradients are 4,196,864 bytes. foreach takes sqrt(v) of the decayed group,
    # every weight but the 5 norm gains of 128: (1,049,216 - 640) x 4; the loop of the largest tensor, the
    # 6400 x 128 embedding, twice (sqrt(v) and sqrt(v) / bias_correction): 2 x 819,200 x 4.
    expected_transient = {"adamw": 0, "adamw-fused": 0, "adamw-foreach": 4_194_304, "adamw-forloop": 6_553_600}
    for name, transient in expected_transient.items():
        est = estimate(cfg, 1, 32, optimizer=name)
        resting = sum(est.terms[k] for k in ("weights", "buffers", "batch", "optimizer_state")) + 4_196_864
        assert est.phase_peaks["optimizer"] == resting + transient, name
        assert measure(cfg, 1, 32, optimizer=name, device="cpu").phase_peaks["optimizer"] == resting + transient, name
    # CUDA: the trainer runs fused there too, so "adamw" models fused (estimated only: measure() here runs on CPU)
    assert estimate(cfg, 1, 32, device="cuda").phase_peaks["optimizer"] == \
        estimate(cfg, 1, 32, optimizer="adamw-fused", device="cuda").phase_peaks["optimizer"]
    # a torch without a fused kernel: the trainer and so the estimate fall back to PyTorch's defaults,
    # the per-tensor loop on CPU and foreach on CUDA
    monkeypatch.setattr(optim, "fused_adamw_supported", lambda device_type: False)
    assert estimate(cfg, 1, 32).phase_peaks == estimate(cfg, 1, 32, optimizer="adamw-forloop").phase_peaks
    assert estimate(cfg, 1, 32, device="cuda").transients == \
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
    assert ckpt.terms["activations"] == 134_217_728  # one fp32 block input per layer: 8 x 16 x 512 x 512 x 4
    assert ckpt.peak_bytes < plain.peak_bytes
    assert estimate(cfg, 16, 512, optimizer="none").terms["optimizer_state"] == 0
    assert estimate(cfg, 16, 512, optimizer="sgd").terms["optimizer_state"] == 103_319_552  # momentum: 25,829,888 x 4
    cuda = estimate(cfg, 16, 512, device="cuda", gpu="rtx-4090")
    assert cuda.overhead["cuda_context"] == 500 * MiB
    assert cuda.overhead["cublas_workspace"] == 9 * MiB  # cuBLAS 8 and cuBLASLt 1; Hopper's are 32 and 32
    assert estimate(cfg, 16, 512, device="cuda", gpu="h100-80gb").overhead["cublas_workspace"] == 64 * MiB
    assert plain.overhead == {}  # a CPU step has no CUDA context


def test_largest_batch_is_the_boundary_of_fits():
    cfg = replace(get_preset("minimind2-small"), num_layers=12)
    for card in ("rtx-4060", "rtx-4090", "a100-80gb"):
        best = largest_batch(cfg, 512, card)
        assert best > 0
        assert fits(cfg, best, 512, card) and not fits(cfg, best + 1, 512, card)
    assert largest_batch(cfg, 512, "rtx-4060") < largest_batch(cfg, 512, "rtx-4090") < largest_batch(cfg, 512, 80)
    assert not fits(cfg, 128, 512, "rtx-4090")  # the notebook's question: 12 layers, 128 x 512, 24 GB
    assert largest_batch(cfg, 512, 0.5) == 0
    assert {"t4", "v100-16gb", "v100-32gb", "rtx-3060", "rtx-4060", "rtx-4070", "rtx-4080", "rtx-3090", "rtx-4090",
            "rtx-4090d", "a10", "l4", "a100-40gb", "a100-80gb", "h100-80gb", "h200"} <= set(GPU_PRESETS)
    assert all(card.capability is not None for card in GPU_PRESETS.values())
    assert not GPU_PRESETS["t4"].bf16 and not GPU_PRESETS["v100-16gb"].bf16 and GPU_PRESETS["l4"].bf16


def test_an_estimate_fits_a_card_when_its_total_with_overhead_does():
    # tiny (508,224 parameters), batch 1 x 32, fp32 on CUDA. The peak is backward's end: weights, gradients
    # (2,032,896 bytes each), AdamW's m, v and 20 step counters (4,065,872), RoPE tables (65,536), the batch
    # (512) and the embedding's gradient with its sum into the tied LM head's (2 x 6400 x 64 x 4 = 3,276,800):
    # 11,474,512 bytes. The overhead adds the 500 MiB context, 9 MiB of cuBLAS workspace and 10% of the
    # gradients and transients (530,969): 545,730,665 bytes, 520.45 MiB.
    est = estimate(get_preset("tiny"), 1, 32, precision="fp32", device="cuda")
    assert (est.peak_bytes, est.total_with_overhead) == (11_474_512, 545_730_665)
    assert est.fits(GPUCard("a 521 MiB card", 521))
    assert not est.fits(GPUCard("a 520 MiB card", 520))
    assert est.fits("rtx-4060") and not est.fits(0.5)  # a preset's name, or a size in GB


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"seq_len": 0}, "seq_len must be at least 1, got 0"),
    ({"precision": "int8"}, "precision must be one of bf16, fp16, fp32; got 'int8'"),
    ({"optimizer": "adam"}, "optimizer must be one of adamw, adamw-fused, adamw-foreach, adamw-forloop, sgd, none"),
    ({"attention": "flash"}, "attention must be one of sdpa, naive; got 'flash'"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be at least 1, got 0"),
    ({"device": "mps"}, "device must be one of cpu, cuda; got 'mps'"),
])
def test_a_step_spec_names_its_bad_field_and_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StepSpec(**{"batch_size": 2, "seq_len": 64, **kwargs})
    # estimate() and measure() build the same spec, so they refuse alike, before any work
    options = {"device": "cpu", **kwargs}
    batch_size, seq_len = options.pop("batch_size", 2), options.pop("seq_len", 64)
    for step in (estimate, measure):
        with pytest.raises(ValueError, match=re.escape(message)):
            step(small(64, 1), batch_size, seq_len, **options)


def test_a_step_spec_keeps_the_models_attention_unless_told():
    assert StepSpec(1, 32).attention is None
    assert estimate(small(64, 1, attention="naive"), 1, 32).attention == "naive"
    assert estimate(small(64, 1, attention="naive"), 1, 32, attention="sdpa").attention == "sdpa"


def test_every_preset_is_modelled_and_long_sequences_and_unknown_gpus_are_refused():
    for name in PRESETS:  # QK-norm, both MoE presets: no configuration is refused any more
        assert estimate(get_preset(name), 1, 64).peak_bytes > 0
    with pytest.raises(ValueError, match="max_position_embeddings=1024, got 5000"):
        estimate(small(64, 1), 2, 5000)
    with pytest.raises(InvalidArgument, match="rtx-4090"):
        get_gpu("rtx-9999")
    for bad in (float("inf"), float("nan"), 0, -2):
        with pytest.raises(InvalidArgument, match="positive size in GB") as err:
            get_gpu(bad)
        assert err.value.argument == "gpu"
    assert get_gpu(24).memory_bytes == 25_769_803_776  # 24 x 1024 MiB
