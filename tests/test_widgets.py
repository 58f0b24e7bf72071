"""The memory explorer is a thin view: its plotted data equal estimate() at the slider values."""
from __future__ import annotations

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

from minimind_edu.memory import GiB, estimate, largest_batch  # noqa: E402
from minimind_edu.widgets import ExplorerState, curves, memory_explorer  # noqa: E402


def test_plotted_curves_equal_estimate_at_slider_values():
    ex = memory_explorer("minimind2-small", gpu="rtx-4090")
    ex.sliders["batch"].value = 32
    ex.sliders["seq_len"].value = 256
    ex.sliders["layers"].value = 12
    ex.sliders["precision"].value = "fp32"
    ex.sliders["attention"].value = "naive"
    cfg = ex.state.config()
    assert (cfg.num_layers, cfg.hidden_size, cfg.attention) == (12, 512, "naive")
    kw = dict(precision="fp32", checkpointing=False, device="cuda", gpu="rtx-4090")
    batch_curve = ex.plot_data["batch"]
    i = batch_curve["x"].index(32)
    assert batch_curve["allocated"][i] == estimate(cfg, 32, 256, **kw).peak_bytes / GiB
    seq_curve = ex.plot_data["seq_len"]
    j = seq_curve["x"].index(1024)
    assert seq_curve["total"][j] == estimate(cfg, 32, 1024, **kw).total_with_overhead / GiB
    layer_curve = ex.plot_data["layers"]
    assert layer_curve["allocated"][0] == estimate(replace(cfg, num_layers=1), 32, 256, **kw).peak_bytes / GiB
    # the matplotlib line holds the same numbers
    line = ex.figure.axes[0].lines[0]
    assert list(line.get_ydata()) == batch_curve["allocated"]
    # the picture is rendered (PNG bytes) and the HTML legend lists the breakdown
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "activations" in ex.legend.value and "GiB" in ex.legend.value
    # the stacked bar sums to the nvidia-smi total
    assert abs(sum(ex.plot_data["breakdown"].values()) - estimate(cfg, 32, 256, **kw).total_with_overhead / GiB) < 1e-9


def test_fit_text_changes_with_the_card_and_batch():
    ex = memory_explorer("minimind2-small", gpu="h100-80gb", batch=64, seq_len=512, layers=12)
    assert "fits on H100" in ex.fit_label.value
    best = largest_batch(ex.state.config(), 512, "rtx-4060", precision="bf16", checkpointing=False)
    ex.sliders["gpu"].value = "rtx-4060"
    assert "does NOT fit" in ex.fit_label.value and f"largest batch that fits: {best}" in ex.fit_label.value
    ex.sliders["checkpointing"].value = True  # recomputation frees enough for a larger batch
    assert f"largest batch that fits: {best}" not in ex.fit_label.value


def test_measure_button_adds_a_measured_point():
    ex = memory_explorer("tiny", batch=2, seq_len=64, gpu="rtx-4060")
    ex.measure_device = "cpu"
    assert ex.measured == []
    ex.measure_button.click()
    assert len(ex.measured) == 1
    state, gib = ex.measured[0]
    assert state == ex.state
    est = estimate(state.config(), 2, 64).peak_bytes / GiB
    assert abs(gib - est) / gib <= 0.03
    labels = [ln.get_label() for ln in ex.figure.axes[0].lines]
    assert "measured" in labels and "measured on cpu" in ex.status.value


def test_curves_are_pure_and_mark_the_current_point():
    state = ExplorerState(batch=24, seq_len=768, layers=5)
    data = curves(state)
    assert data["batch"]["current"] == 24 and 24 in data["batch"]["x"]
    assert data["layers"]["x"] == list(range(1, 33))
    assert curves(state) == data


def test_legend_colours_are_css_even_when_the_colour_cycle_holds_rgb_tuples():
    # Seen in JupyterLab (tests/e2e): a colour cycle of RGB tuples went into CSS as "color:(0.12, ...)",
    # which browsers ignore, so every key square in the legend was black.
    import matplotlib
    from cycler import cycler

    from minimind_edu.widgets import legend_html

    parts = {"weights": 1.0, "activations": 2.5}
    with matplotlib.rc_context({"axes.prop_cycle": cycler(color=[(0.0, 0.5, 1.0), (1.0, 0.0, 0.0)])}):
        html = legend_html(parts)
    assert "color:#0080ff" in html and "color:#ff0000" in html and "(0." not in html
    assert "activations 2.50" in html


def test_the_explorer_names_the_kernel_and_goes_quadratic_for_the_math_one():
    # bf16 on a T4: no fused kernel takes it (flash needs an Ampere GPU, the memory-efficient kernel has no bf16
    # there), so PyTorch runs the math kernel and the sequence-length curve bends upwards; fp16 is linear again.
    ex = memory_explorer("minimind2-small", gpu="t4", batch=4, seq_len=512)
    assert ex.plot_data["kernel"] == "math" and "SDPA math kernel" in ex.attention_label.value
    xs, ys = ex.plot_data["seq_len"]["x"], ex.plot_data["seq_len"]["allocated"]
    at = {x: y for x, y in zip(xs, ys)}
    assert at[4096] - at[2048] > 3 * (at[2048] - at[1024])  # quadratic: about 4x per doubling
    ex.sliders["precision"].value = "fp16"
    assert ex.plot_data["kernel"] == "efficient" and "linear in T" in ex.attention_label.value
    at = dict(zip(ex.plot_data["seq_len"]["x"], ex.plot_data["seq_len"]["allocated"]))
    assert abs((at[4096] - at[2048]) - 2 * (at[2048] - at[1024])) < 1e-9
    assert "KV cache" in ex.generation_label.value


def test_gpu_count_and_strategy_give_the_per_gpu_estimate():
    ex = memory_explorer("minimind2", gpu="rtx-4090", batch=16, seq_len=512)
    one = ex.state.estimate()
    ex.sliders["gpus"].value = 8
    ex.sliders["strategy"].value = "fsdp"
    eight = ex.state.estimate()
    assert (eight.world_size, eight.strategy) == (8, "fsdp")
    assert eight.terms == estimate(ex.state.config(), 16, 512, device="cuda", gpu="rtx-4090", world_size=8,
                                   strategy="fsdp").terms
    assert eight.terms["weights"] < one.terms["weights"]  # FSDP keeps an eighth of the weights per GPU
    assert "per GPU of 8 (fsdp)" in ex.fit_label.value
    ex.measure_button.click()  # measuring is one process here: it says so instead of measuring
    assert ex.measured == [] and "set GPUs to 1 to measure" in ex.status.value
