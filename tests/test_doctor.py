"""minimind-edu doctor: each check says OK, or what to do, from probes the tests replace."""
from __future__ import annotations

import pytest

from minimind_edu import doctor
from minimind_edu.cli import main
from minimind_edu.doctor import Check, DeviceInfo


def test_this_machine_gets_one_line_per_check_and_a_verdict():
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    assert names == ["python", "pytorch", "device", "bf16", "threads", "disk", "cjk font", "widgets"]
    assert all(isinstance(c, Check) and c.detail for c in checks)
    assert all(c.advice for c in checks if not c.ok)  # every problem says what to do
    report = doctor.format_report(checks)
    assert len(report.splitlines()) == len(checks) + 1
    assert report.splitlines()[-1] in ("all checks passed", f"{sum(not c.ok for c in checks)} check(s) need "
                                                            "attention (FIX lines above)")


def test_no_cjk_font_says_how_to_install_one(monkeypatch):
    monkeypatch.setattr(doctor, "probe_cjk_font", lambda: None)
    check = doctor.check_cjk_font()
    assert not check.ok and "fonts-noto-cjk" in check.advice and "boxes" in check.advice


def test_a_cjk_font_is_named(monkeypatch):
    monkeypatch.setattr(doctor, "probe_cjk_font", lambda: "Noto Sans CJK SC")
    assert doctor.check_cjk_font() == Check("cjk font", True, "Noto Sans CJK SC")


def test_no_widget_front_end_names_the_missing_package(monkeypatch):
    versions = {"ipywidgets": "8.1.0", "jupyterlab_widgets": None}
    monkeypatch.setattr(doctor, "probe_package", versions.get)
    check = doctor.check_widgets()
    assert not check.ok
    assert check.detail == "jupyterlab_widgets not installed"
    assert "pip install jupyterlab_widgets" in check.advice


def test_cpu_only_machine_is_fine_and_says_so():
    check = doctor.check_device(DeviceInfo("cpu", "CPU (AVX2)", 4, None, True))
    assert check.ok and "no GPU" in check.detail and "4 cores" in check.detail


def test_cuda_device_reports_name_and_compute_capability():
    check = doctor.check_device(DeviceInfo("cuda", "NVIDIA H100", 16, (9, 0), True))
    assert check.ok and "NVIDIA H100" in check.detail and "compute capability 9.0" in check.detail


@pytest.mark.parametrize("kind, flag", [("cuda", "fp16"), ("mps", "fp32"), ("cpu", "fp32")])
def test_no_bf16_says_which_precision_to_use(kind, flag):
    check = doctor.check_bf16(DeviceInfo(kind, "x", 2, (7, 5) if kind == "cuda" else None, False))
    assert not check.ok and f"--precision {flag}" in check.advice


def test_more_threads_than_cores_is_flagged():
    assert doctor.check_threads(threads=2, cores=2).ok
    check = doctor.check_threads(threads=8, cores=2)
    assert not check.ok and "OMP_NUM_THREADS=2" in check.advice


def test_old_python_and_torch_are_flagged(monkeypatch):
    monkeypatch.setattr(doctor, "probe_python", lambda: (3, 9, 18))
    monkeypatch.setattr(doctor, "probe_torch_version", lambda: "2.3.1+cu121")
    assert not doctor.check_python().ok
    assert not doctor.check_torch().ok
    monkeypatch.setattr(doctor, "probe_torch_version", lambda: None)
    assert "not installed" in doctor.check_torch().detail


def test_torch_2_4_works_but_mentions_grouped_attention(monkeypatch):
    monkeypatch.setattr(doctor, "probe_torch_version", lambda: "2.4.1")
    check = doctor.check_torch()
    assert check.ok and "before 2.5" in check.detail


def test_low_disk_is_flagged(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "probe_free_disk_gib", lambda path: 0.4)
    check = doctor.check_disk(tmp_path)
    assert not check.ok and "0.4 GiB free" in check.detail


def test_report_and_cli_on_a_machine_with_problems(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "probe_device", lambda: DeviceInfo("cpu", "CPU (DEFAULT)", 2, None, True))
    monkeypatch.setattr(doctor, "probe_cjk_font", lambda: None)
    monkeypatch.setattr(doctor, "probe_package", lambda name: None)
    monkeypatch.setattr(doctor, "probe_threads", lambda: 2)
    assert main(["doctor"]) == 0  # advice, not an error
    out = capsys.readouterr().out
    assert "FIX  cjk font" in out and "FIX  widgets" in out and "OK   device" in out
    assert out.strip().endswith("2 check(s) need attention (FIX lines above)")
    assert main(["doctor", "--strict"]) == 1


def test_a_cpu_without_bf16_instructions_is_told_auto_picks_fp32():
    check = doctor.check_bf16(DeviceInfo("cpu", "CPU (AVX2)", 4, None, True, fast_bf16=False))
    assert check.ok and "fp32" in check.detail
