"""Calibrating the CUDA overheads on the learner's own GPU, so that "will it fit?" stops resting on guesses.

On a GPU nvidia-smi shows more than the tensors a step allocates: the CUDA context (driver state and loaded
kernels), cuBLAS/cuBLASLt workspaces and the caching allocator's reserve (rounded blocks, freed blocks it keeps).
:mod:`minimind_edu.memory` starts from documentation constants for them (500 MiB, 9 or 64 MiB, 10%).
``minimind-edu memory --calibrate`` measures all three on this machine's GPU: the driver's used memory after
CUDA starts, the allocator's growth over the first matrix products (fp32 and bf16), and over a few real training
steps how far ``max_memory_reserved`` rises above ``max_memory_allocated``, relative to the memory the step
allocates and frees (the estimate's basis for the allocator term). It writes them to a JSON file; from then on
every CUDA estimate (so ``fits()``, ``largest_batch()``, the explorer and the CLI) uses them and says so.

Where there is no GPU there is nothing to measure: :func:`calibrate` says so and writes nothing. The
measurements go through a :class:`CudaProbe`, so a test can hand it a fake one and check the whole path on CPU.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .i18n import check_language
from .memory_kernels import training_kernel
from .memory_measure import StepSpec, measure_step
from .memory_moments import StepSizes, static_terms, step_moments
from .model import get_preset

CALIBRATION_FILE = "memory_calibration.json"
# A few real steps of the course's 26M model: short and long sequences, bf16 and fp32 (about a minute in all).
CALIBRATION_STEPS = (StepSpec(8, 256, "bf16", device="cuda"), StepSpec(4, 1024, "bf16", device="cuda"),
                     StepSpec(8, 256, "fp32", device="cuda"))


def calibration_path() -> Path:
    """``$MINIMIND_EDU_CALIBRATION`` if set, else ``memory_calibration.json`` in the course's cache folder
    (``$MINIMIND_EDU_CACHE``, by default ``.cache/`` at the repository root, as for tokenizers and token files)."""
    explicit = os.environ.get("MINIMIND_EDU_CALIBRATION")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("MINIMIND_EDU_CACHE")
    root = Path(cache) if cache else Path(__file__).resolve().parent.parent / ".cache"
    return root / CALIBRATION_FILE


@dataclass(frozen=True)
class Calibration:
    """The CUDA overheads measured on one GPU, in bytes, and the allocator's reserve as a fraction."""

    gpu: str
    capability: tuple[int, int]
    torch_version: str
    context_bytes: int
    cublas_workspace_bytes: int
    allocator_slack_fraction: float
    measured_at: str

    def describe(self, lang: str = "en") -> str:
        """Where the overheads were measured and what they are, in English or Chinese (``lang`` "en" or "zh")."""
        context = f"{self.context_bytes / 2**20:.0f}"
        workspace = f"{self.cublas_workspace_bytes / 2**20:.1f}"
        reserve = f"{self.allocator_slack_fraction:.1%}"
        if check_language(lang) == "zh":
            return (f"已在 {self.gpu} 上实测校准（torch {self.torch_version}，{self.measured_at}）：CUDA 上下文 "
                    f"{context} MiB，cuBLAS 工作区 {workspace} MiB，分配器预留 {reserve}")
        return (f"calibrated on {self.gpu} (torch {self.torch_version}, {self.measured_at}): context {context} MiB, "
                f"cuBLAS workspace {workspace} MiB, allocator reserve {reserve}")


_cache: dict[str, tuple[float, Calibration | None]] = {}


def load_calibration(path: Path | None = None) -> Calibration | None:
    """The calibration file's contents, or None when there is none (read again only when the file changes)."""
    path = Path(path) if path else calibration_path()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    cached = _cache.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        data = json.loads(path.read_text())
        cal = Calibration(**{**data, "capability": tuple(data["capability"])})
    except (ValueError, TypeError, KeyError):  # a damaged or older file: ignored, the constants apply
        cal = None
    _cache[str(path)] = (mtime, cal)
    return cal


class CudaProbe:
    """The measurements, on this machine's first CUDA GPU."""

    def name(self) -> str:
        return torch.cuda.get_device_name(0)

    def capability(self) -> tuple[int, int]:
        return torch.cuda.get_device_capability(0)

    def context_bytes(self) -> int:
        """The driver's used memory once CUDA runs, less what the allocator holds (other processes on the
        GPU would count too: calibrate on an otherwise idle GPU)."""
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return total - free - torch.cuda.memory_reserved()

    def cublas_workspace_bytes(self) -> int:
        """What the allocator gains over the first fp32 and bf16 matrix products beyond their own tensors."""
        a = torch.randn(512, 512, device="cuda")
        b = a.bfloat16()
        before = torch.cuda.memory_allocated()
        c, d = a @ a, b @ b
        torch.cuda.synchronize()
        grown = torch.cuda.memory_allocated() - before - c.nbytes - d.nbytes
        del a, b, c, d
        return max(grown, 0)

    def allocator_reserve(self, spec: StepSpec) -> tuple[int, int]:
        """(max_memory_reserved - max_memory_allocated, the estimate's allocator basis) of one real step. The
        basis is what the estimate's peak moment holds beyond the step-long terms (see memory.py's comments)."""
        cfg = get_preset("minimind2-small")
        torch.cuda.empty_cache()
        m = measure_step(cfg, spec)
        sizes = StepSizes(cfg, spec, training_kernel(cfg, spec, self.capability()))
        moments = step_moments(sizes)
        static = sum(static_terms(sizes).values())
        peak = max(moments, key=lambda moment: static + sum(moment.terms.values()))
        return (m.reserved_bytes or 0) - m.peak_bytes, sum(peak.terms.values())


@dataclass
class CalibrationResult:
    message: str
    calibration: Calibration | None = None
    path: Path | None = None


def calibrate(path: Path | None = None, probe: CudaProbe | None = None,
              steps: tuple[StepSpec, ...] = CALIBRATION_STEPS) -> CalibrationResult:
    """Measure this GPU's overheads and write them to ``path`` (default :func:`calibration_path`)."""
    if probe is None:
        if not torch.cuda.is_available():
            return CalibrationResult("no CUDA GPU on this machine: nothing to calibrate (the estimate keeps its "
                                     "documented overheads for CUDA)")
        probe = CudaProbe()
    context, workspace = probe.context_bytes(), probe.cublas_workspace_bytes()
    reserves = [probe.allocator_reserve(spec) for spec in steps]
    fraction = max(extra / basis for extra, basis in reserves if basis > 0)  # the largest: fits() stays safe
    cal = Calibration(probe.name(), tuple(probe.capability()), torch.__version__, context, workspace,
                      round(max(fraction, 0.0), 4), time.strftime("%Y-%m-%d"))
    path = Path(path) if path else calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal), indent=2) + "\n")
    return CalibrationResult(f"wrote {path}: {cal.describe()}", cal, path)
