"""--calibrate: nothing to do without a GPU; with one (a fake probe here) a file every CUDA estimate then uses."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

from minimind_edu import memory_calibration  # noqa: E402
from minimind_edu.cli import main  # noqa: E402
from minimind_edu.memory import MiB, estimate, fits, largest_batch  # noqa: E402
from minimind_edu.memory_calibration import calibrate, load_calibration  # noqa: E402
from minimind_edu.memory_measure import StepSpec  # noqa: E402
from minimind_edu.model import get_preset  # noqa: E402


class FakeProbe:
    """What a GPU would report: a 300 MiB context, 40 MiB of workspace, the allocator 20% above the basis."""

    def name(self):
        return "Fake GPU"

    def capability(self):
        return (8, 9)

    def context_bytes(self):
        return 300 * MiB

    def cublas_workspace_bytes(self):
        return 40 * MiB

    def allocator_reserve(self, spec):
        return (spec.batch_size * 1_000_000, spec.batch_size * 5_000_000)  # 20% of the basis


def test_without_a_gpu_there_is_nothing_to_calibrate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMIND_EDU_CALIBRATION", str(tmp_path / "cal.json"))
    monkeypatch.setattr(memory_calibration.torch.cuda, "is_available", lambda: False)
    assert main(["memory", "--calibrate"]) == 0
    assert "nothing to calibrate" in capsys.readouterr().out
    assert not (tmp_path / "cal.json").exists()


def test_a_calibration_file_is_used_by_every_cuda_estimate(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    monkeypatch.setenv("MINIMIND_EDU_CALIBRATION", str(path))
    cfg = get_preset("minimind2-small")
    before = estimate(cfg, 16, 512, device="cuda", gpu="rtx-4090")
    best_before = largest_batch(cfg, 512, "rtx-4090")
    result = calibrate(probe=FakeProbe(), steps=(StepSpec(2, 64, device="cuda"),))
    assert result.path == path and json.loads(path.read_text())["context_bytes"] == 300 * MiB
    assert load_calibration() == result.calibration
    after = estimate(cfg, 16, 512, device="cuda", gpu="rtx-4090")
    assert after.peak_bytes == before.peak_bytes  # the tensors are the same; only the overhead changes
    assert after.overhead["cuda_context"] == 300 * MiB and after.overhead["cublas_workspace"] == 40 * MiB
    assert after.overhead["allocator_slack"] == int(2 * before.overhead["allocator_slack"])  # 20% for 10%
    assert "calibrated on Fake GPU" in after.calibration and before.calibration == ""
    assert fits(cfg, 16, 512, "rtx-4090") == after.fits("rtx-4090")
    assert largest_batch(cfg, 512, "rtx-4090") != best_before or best_before == 0
    assert estimate(cfg, 16, 512, device="cuda", calibration=False).overhead["cuda_context"] == 500 * MiB
    assert estimate(cfg, 16, 512).overhead == {}  # a CPU step has none


def test_the_cli_and_the_explorer_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMIND_EDU_CALIBRATION", str(tmp_path / "cal.json"))
    calibrate(probe=FakeProbe(), steps=(StepSpec(2, 64, device="cuda"),))
    assert main(["memory", "--preset", "tiny", "--batch", "2", "--seq", "32", "--gpu", "rtx-4060"]) == 0
    assert "CUDA overhead: calibrated on Fake GPU" in capsys.readouterr().out
    from minimind_edu.widgets import memory_explorer

    assert "calibrated on Fake GPU" in memory_explorer("tiny", gpu="rtx-4060").attention_label.value
