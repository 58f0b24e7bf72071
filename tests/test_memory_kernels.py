"""Which SDPA kernel runs, as a table (PyTorch's rules), and what the estimate makes of it on real cards."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from minimind_edu.memory import GPU_PRESETS, estimate
from minimind_edu.memory_kernels import sdpa_kernel, training_kernel
from minimind_edu.memory_measure import StepSpec
from minimind_edu.model import SDPA_HAS_GQA, flash_attention_accepts, get_preset

T4, V100, A10, RTX4090, A100, H100 = (7, 5), (7, 0), (8, 6), (8, 9), (8, 0), (9, 0)

# (dtype, compute capability or None for the CPU, head_dim, options) -> kernel
TABLE = [
    # bf16, MiniMind2's head_dim 64: flash on Ampere and newer; nothing fused on Turing/Volta (flash needs sm80,
    # the memory-efficient kernel has no bf16 there), so the math kernel, quadratic in T
    ("bf16", T4, 64, {}, "math"),
    ("bf16", V100, 64, {}, "math"),
    ("bf16", A10, 64, {}, "flash"),
    ("bf16", RTX4090, 64, {}, "flash"),
    ("bf16", A100, 64, {}, "flash"),
    ("bf16", H100, 96, {"gqa": True}, "flash"),  # flash reads grouped K/V heads
    # fp16 on a T4 / V100: the memory-efficient kernel, if k and v come repeated (it takes no grouped heads)
    ("fp16", T4, 64, {}, "efficient"),
    ("fp16", V100, 96, {}, "efficient"),
    ("fp16", T4, 64, {"gqa": True}, "math"),
    # fp32: never flash; memory-efficient everywhere from sm50, unless handed grouped heads: the silent fallback
    ("fp32", A100, 64, {}, "efficient"),
    ("fp32", T4, 64, {}, "efficient"),
    ("fp32", A100, 64, {"gqa": True}, "math"),
    ("fp32", H100, 96, {"gqa": True}, "math"),
    # an explicit mask (decoding with a cache): flash refuses masks, memory-efficient takes them
    ("bf16", A100, 64, {"mask": True}, "efficient"),
    ("bf16", A100, 64, {"mask": True, "gqa": True}, "math"),
    # training with a head_dim in (192, 224] on sm86/sm89 is not flash's; 256 is, without dropout; sm80 takes both
    ("bf16", RTX4090, 200, {}, "efficient"),
    ("bf16", RTX4090, 256, {}, "flash"),
    ("bf16", RTX4090, 256, {"dropout": 0.1}, "efficient"),
    ("bf16", A100, 200, {}, "flash"),
    ("bf16", A100, 288, {}, "efficient"),  # head_dim above 256: no flash anywhere
    ("bf16", A100, 100, {"gqa": True, "training": False}, "flash"),
    # alignment: the memory-efficient kernel reads 8 halves (4 floats) at a time on tensor cores
    ("fp16", T4, 36, {}, "math"),
    ("fp32", A100, 36, {}, "efficient"),
    ("fp32", A100, 34, {}, "math"),
    # the CPU: its fused kernel takes grouped heads and masks, but not dropout
    ("bf16", None, 64, {"gqa": True}, "flash"),
    ("fp32", None, 64, {"mask": True}, "flash"),
    ("bf16", None, 64, {"dropout": 0.1}, "math"),
]


@pytest.mark.parametrize("dtype,capability,head_dim,options,kernel", TABLE)
def test_the_kernel_table(dtype, capability, head_dim, options, kernel):
    assert sdpa_kernel(dtype, capability, head_dim, **options) == kernel


def test_grouped_heads_need_pytorch_2_5_and_bad_dtypes_are_named():
    with pytest.raises(ValueError, match="2.5"):
        sdpa_kernel("bf16", A100, 64, gqa=True, torch_version=(2, 4))
    assert sdpa_kernel("bf16", A100, 64, torch_version=(2, 4)) == "flash"
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16"):
        sdpa_kernel("int8", A100, 64)


def test_the_model_passes_grouped_heads_only_where_flash_takes_them():
    # The model's own rule (model.flash_attention_accepts) is the table's flash column: where it says no, the
    # model repeats k and v, and the table then finds the memory-efficient kernel instead of the math one.
    for card in GPU_PRESETS.values():
        for dtype in ("bf16", "fp16", "fp32"):
            for head_dim in (64, 80, 96):
                flash = flash_attention_accepts(getattr(torch, {"bf16": "bfloat16", "fp16": "float16",
                                                                "fp32": "float32"}[dtype]), card.capability, head_dim)
                assert flash == (sdpa_kernel(dtype, card.capability, head_dim, gqa=True) == "flash")
                if not flash:
                    assert sdpa_kernel(dtype, card.capability, head_dim, gqa=False) == (
                        "math" if dtype == "bf16" and card.capability < (8, 0) else "efficient")


@pytest.mark.skipif(not SDPA_HAS_GQA, reason="enable_gqa arrived in PyTorch 2.5")
def test_training_kernel_for_the_presets_on_common_cards():
    cfg = get_preset("minimind2-small")
    bf16, fp16, fp32 = StepSpec(8, 512), StepSpec(8, 512, "fp16"), StepSpec(8, 512, "fp32")
    cuda = {name: replace(spec, device="cuda") for name, spec in (("bf16", bf16), ("fp16", fp16), ("fp32", fp32))}
    cap = {name: card.capability for name, card in GPU_PRESETS.items()}
    assert training_kernel(cfg, cuda["bf16"], cap["a100-80gb"]) == training_kernel(cfg, cuda["bf16"], cap["h200"])
    l4 = training_kernel(cfg, cuda["bf16"], cap["l4"])
    assert (l4.name, l4.grouped_kv) == ("flash", True)
    t4 = training_kernel(cfg, cuda["bf16"], cap["t4"])
    assert (t4.name, t4.quadratic) == ("math", True)
    assert training_kernel(cfg, cuda["fp16"], cap["t4"]).name == "efficient"
    fp32_a100 = training_kernel(cfg, cuda["fp32"], cap["a100-80gb"])
    assert (fp32_a100.name, fp32_a100.grouped_kv) == ("efficient", False)  # repeated, not the math fallback
    assert training_kernel(cfg, bf16).name == "flash"  # the CPU's fused kernel
    assert training_kernel(replace(cfg, dropout=0.1), bf16).name == "math"
    assert training_kernel(cfg, StepSpec(8, 512, attention="naive")).name == "naive"


def test_the_estimate_goes_quadratic_where_the_math_kernel_runs():
    cfg = get_preset("minimind2-small")

    def increments(gpu, precision):
        peaks = [estimate(cfg, 4, t, precision=precision, device="cuda", gpu=gpu).peak_bytes for t in (512, 1024, 2048)]
        return peaks[1] - peaks[0], peaks[2] - peaks[1]

    first, second = increments("t4", "bf16")  # math: doubling T more than doubles the increment
    assert second > 2.5 * first
    first, second = increments("t4", "fp16")  # memory-efficient: linear
    assert second == 2 * first
    assert estimate(cfg, 4, 512, device="cuda", gpu="t4").kernel == "math"
    # fp32 on an A100: k and v repeated for the memory-efficient kernel, saved at 8 heads instead of 2
    a100 = estimate(cfg, 4, 512, precision="fp32", device="cuda", gpu="a100-80gb")
    cpu = estimate(cfg, 4, 512, precision="fp32")
    assert a100.kernel == "efficient"
    assert a100.activations_per_layer["qkv"] - cpu.activations_per_layer["qkv"] == 2 * 4 * 512 * (512 - 128) * 4
