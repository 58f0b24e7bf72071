"""Is this machine ready for the course? ``minimind-edu doctor`` and notebook 01's first cell ask here.

Each check returns a :class:`Check`: a name, whether it is fine, what was found and, when it is not fine,
what to do. Nothing here stops the course: a missing CJK font only turns Chinese in plots into boxes, and no
GPU only means the CPU does the work. The facts come from small ``probe_*`` functions, one per question, so the
tests can replace them (no GPU here, no font there) and check what the learner would be told.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .device import cpu_has_fast_bf16

MIN_PYTHON = (3, 10)  # pyproject.toml: requires-python = ">=3.10"
MIN_TORCH = (2, 4)  # pyproject.toml: torch>=2.4
GQA_TORCH = (2, 5)  # scaled_dot_product_attention(enable_gqa=True), see model.SDPA_HAS_GQA
MIN_FREE_DISK_GIB = 1.0  # a rule of thumb for runs, token caches and pip downloads, not a measured need
# Font families with Chinese characters, as matplotlib names them, for machines without fontconfig's fc-list.
CJK_FAMILY_HINTS = ("CJK", "WenQuanYi", "Noto Sans SC", "Noto Serif SC", "Source Han", "PingFang", "Heiti",
                    "Hiragino Sans GB", "STHeiti", "SimHei", "SimSun", "Microsoft YaHei", "Droid Sans Fallback",
                    "AR PL", "Songti")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` False means ``advice`` says what to do."""

    name: str
    ok: bool
    detail: str
    advice: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda", "mps" or "cpu"
    name: str
    cpu_cores: int
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16: bool | None = None  # None: could not tell
    fast_bf16: bool = True  # on a CPU: bf16 matmul instructions (AVX512-BF16 or AMX)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# ---------------------------------------------------------------------------------------------------------
# Probes: each answers one question about this machine (the tests replace them).


def probe_python() -> tuple[int, int, int]:
    return sys.version_info[:3]


def probe_torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def probe_cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def probe_device() -> DeviceInfo:
    import torch

    cores = probe_cpu_cores()
    if torch.cuda.is_available():
        return DeviceInfo("cuda", torch.cuda.get_device_name(0), cores, torch.cuda.get_device_capability(0),
                          torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU (MPS)", cores, None, _bf16_works("mps"))
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    return DeviceInfo("cpu", f"CPU ({capability})", cores, None, _bf16_works("cpu"), cpu_has_fast_bf16())


def _bf16_works(device: str) -> bool:
    import torch

    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16, device=device)
        return bool((a @ a).float().sum().item() == 64.0)
    except (RuntimeError, TypeError):
        return False


def probe_threads() -> int:
    import torch

    return torch.get_num_threads()


def probe_free_disk_gib(path: str | Path = ".") -> float:
    return shutil.disk_usage(path).free / 2**30


def probe_cjk_font() -> str | None:
    """The name of a font with Chinese characters, or None."""
    if shutil.which("fc-list"):
        try:
            found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            found = None
        if found is not None and found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0].split(",")[0]
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    for font in font_manager.fontManager.ttflist:
        if any(hint.lower() in font.name.lower() for hint in CJK_FAMILY_HINTS):
            return font.name
    return None


def probe_package(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Checks: each turns a probe's answer into a line of the report.


def check_python() -> Check:
    version = probe_python()
    text = ".".join(map(str, version))
    if tuple(version[:2]) >= MIN_PYTHON:
        return Check("python", True, text)
    return Check("python", False, text, f"the course needs Python >= {'.'.join(map(str, MIN_PYTHON))}; install "
                                        "a newer Python and recreate .venv (make clean && make lab)")


def check_torch() -> Check:
    version = probe_torch_version()
    if version is None:
        return Check("pytorch", False, "not installed", "run `make lab` (or pip install -e .) to install PyTorch")
    if _version_tuple(version) < MIN_TORCH:
        return Check("pytorch", False, version, "the course needs PyTorch >= 2.4: pip install -U torch")
    if _version_tuple(version) < GQA_TORCH:
        return Check("pytorch", True, f"{version} (before 2.5: grouped-query attention repeats k and v, "
                                      "which costs memory)")
    return Check("pytorch", True, version)


def check_device(info: DeviceInfo | None = None) -> Check:
    info = info or probe_device()
    if info.kind == "cuda":
        major, minor = info.capability or (0, 0)
        return Check("device", True, f"CUDA: {info.name}, compute capability {major}.{minor}; "
                                     f"{info.cpu_cores} CPU cores")
    if info.kind == "mps":
        return Check("device", True, f"{info.name}; {info.cpu_cores} CPU cores")
    return Check("device", True, f"no GPU: {info.name}, {info.cpu_cores} cores (fine for the course; "
                                 "see docs/gpu_and_colab.md)")


def check_bf16(info: DeviceInfo | None = None) -> Check:
    info = info or probe_device()
    if info.bf16 and info.kind == "cpu" and not info.fast_bf16:
        return Check("bf16", True, "runs on this CPU, but without bf16 instructions (AVX512-BF16, AMX) it is "
                                   "slower than fp32, so --precision auto trains in fp32")
    if info.bf16:
        return Check("bf16", True, f"supported on {info.kind}")
    advice = {"cuda": "this GPU has no bf16 (compute capability below 8.0): train with --precision fp16",
              "mps": "this Mac cannot compute in bf16 (macOS 14 or newer can): train with --precision fp32"}
    return Check("bf16", False, f"not available on {info.kind}",
                 advice.get(info.kind, "bf16 does not run here: train with --precision fp32"))


def check_threads(threads: int | None = None, cores: int | None = None) -> Check:
    threads = probe_threads() if threads is None else threads
    cores = probe_cpu_cores() if cores is None else cores
    detail = f"PyTorch uses {threads} thread(s) on {cores} core(s)"
    if threads > cores:
        return Check("threads", False, detail, f"more threads than cores slows everything down: set "
                                               f"OMP_NUM_THREADS={cores} before starting Python")
    return Check("threads", True, detail)


def check_disk(path: str | Path = ".") -> Check:
    free = probe_free_disk_gib(path)
    detail = f"{free:.1f} GiB free in {Path(path).resolve()}"
    if free < MIN_FREE_DISK_GIB:
        return Check("disk", False, detail, "under 1 GiB free: checkpoints, token caches and downloads may not "
                                            "fit; free some space or work on another disk")
    return Check("disk", True, detail)


def check_cjk_font() -> Check:
    font = probe_cjk_font()
    if font:
        return Check("cjk font", True, font)
    return Check("cjk font", False, "no font with Chinese characters found",
                 "Chinese in plots and in JupyterLab shows as boxes; install one, e.g. "
                 "`sudo apt install fonts-noto-cjk` (Debian/Ubuntu), then restart the kernel")


def check_widgets() -> Check:
    ipywidgets, front_end = probe_package("ipywidgets"), probe_package("jupyterlab_widgets")
    if ipywidgets and front_end:
        return Check("widgets", True, f"ipywidgets {ipywidgets}, JupyterLab front end {front_end}")
    missing = " and ".join(n for n, v in (("ipywidgets", ipywidgets), ("jupyterlab_widgets", front_end)) if not v)
    return Check("widgets", False, f"{missing} not installed",
                 f"notebook 04's memory explorer will not draw: pip install {missing.replace(' and ', ' ')}, "
                 "then restart JupyterLab")


def run_checks(path: str | Path = ".") -> list[Check]:
    """Every check, in the order the report prints them; ``path`` is where the disk check looks."""
    info = probe_device() if probe_torch_version() is not None else None
    checks = [check_python(), check_torch()]
    if info is not None:
        checks += [check_device(info), check_bf16(info), check_threads(cores=info.cpu_cores)]
    checks += [check_disk(path), check_cjk_font(), check_widgets()]
    return checks


def format_report(checks: list[Check]) -> str:
    """One line per check: ``OK`` and what was found, or ``FIX`` and what to do."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        if c.ok:
            lines.append(f"OK   {c.name:{width}}  {c.detail}")
        else:
            lines.append(f"FIX  {c.name:{width}}  {c.detail}: {c.advice}")
    problems = sum(not c.ok for c in checks)
    lines.append("all checks passed" if not problems else f"{problems} check(s) need attention (FIX lines above)")
    return "\n".join(lines)
