"""The memory timeline of one training step: its highest point is measure()'s peak; the CLI saves it."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from minimind_edu.cli import main  # noqa: E402
from minimind_edu.memory_measure import StepSpec, measure_step  # noqa: E402
from minimind_edu.memory_timeline import plot_timeline, record_timeline  # noqa: E402
from minimind_edu.model import get_preset  # noqa: E402


@pytest.mark.parametrize("spec", [StepSpec(4, 128), StepSpec(2, 256, "fp32", checkpointing=True),
                                  StepSpec(2, 64, attention="naive")])
def test_the_timelines_maximum_is_the_measured_peak(spec):
    cfg = get_preset("tiny")
    timeline = record_timeline(cfg, spec)
    assert timeline.peak == measure_step(cfg, spec).peak_bytes == timeline.measurement.peak_bytes
    assert len(timeline.total) == len(timeline.ops)
    assert all(len(s) == len(timeline.ops) for s in timeline.series.values())
    # what lives through the step: weights (with batch and RoPE tables) and AdamW's state, from the first operator
    assert timeline.series["weights"][0] > 0 and timeline.series["optimizer state"][0] > 0
    assert max(timeline.series["gradients"]) > 0 and max(timeline.series["LM head block"]) > 0
    if not spec.checkpointing:  # each layer's saved activations, gone by the end of the step
        assert max(timeline.series["layer 0 activations"]) > 0 and timeline.series["layer 0 activations"][-1] == 0
    # the estimate's moments, drawn over it: the largest is the estimate's peak, within 3% of the measured one
    assert abs(max(b for _, b in timeline.moments) - timeline.peak) / timeline.peak <= 0.03
    assert plot_timeline(timeline).get_ylabel() == "MiB alive"


def test_the_cli_saves_the_timeline(tmp_path, capsys):
    out = tmp_path / "timeline.png"
    assert main(["memory", "--preset", "tiny", "--batch", "2", "--seq", "64", "--timeline", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {out}" in capsys.readouterr().out
