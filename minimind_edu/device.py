"""Where a run computes and how: device choice, mixed precision, peak memory, torch.compile or not.

Precision names are the course's own short strings ("bf16", "fp16", "fp32"), because they are what a learner
types on the command line and reads in a table; this module is the one place that turns them into torch
dtypes, so every other module (trainer, estimator, measurement, FLOPs, export) agrees on their meaning.
"""
from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
from collections.abc import Callable
from typing import Any

import torch

from .errors import InvalidArgument

PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_precision(precision: str, allow_auto: bool = False) -> str:
    """``precision`` itself when it is a known name, else a ``ValueError`` that lists the choices."""
    allowed = (("auto",) if allow_auto else ()) + PRECISIONS
    if precision not in allowed:
        raise ValueError(f"precision must be one of {', '.join(allowed)}; got {precision!r}")
    return precision


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name: ``"bf16"`` -> ``torch.bfloat16``."""
    return PRECISION_DTYPES[check_precision(precision)]


def precision_name(dtype: torch.dtype | str) -> str:
    """The precision name of a torch dtype or of a dtype's name (``"bfloat16"``, ``"half"``, ``"bf16"``...)."""
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in PRECISION_DTYPES.items()}
        if dtype in names:
            return names[dtype]
    else:
        aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
        name = aliases.get(dtype, dtype)
        if name in PRECISIONS:
            return name
    raise ValueError(f"dtype must be bf16, fp16 or fp32, got {dtype!r}")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes matmuls in, or None for fp32 (no autocast at all)."""
    return None if check_precision(precision) == "fp32" else PRECISION_DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Matmuls in bf16/fp16, weights and their updates still fp32 (mixed precision); fp32: nothing changes."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu. MPS is never chosen automatically (see the note printed)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            print("note: Apple MPS is available but not used: the course has not verified that it gives the same "
                  "losses as the CPU. Pass device='mps' to try it anyway.", file=sys.stderr)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch's own message lists the device types it knows
        raise InvalidArgument("device", f"{name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device", f"{name}: asked for, but torch.cuda.is_available() is False; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidArgument("device", f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidArgument("device", f"{name}: Apple's MPS is not available here; use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InvalidArgument("device", f"{name}: the course trains on cpu, cuda or mps (a {device.type} device "
                              "cannot run it); use auto to pick the best one here")
    if device.type == "mps":
        print("note: training on Apple MPS is unverified in this course; compare a few losses with device='cpu'.",
              file=sys.stderr)
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AVX512-BF16 or AMX), where bf16 beats fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware does it natively, fp16 (+ GradScaler) on older GPUs, else fp32."""
    check_precision(precision, allow_auto=True)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision='fp16' needs a GPU; on CPU use 'bf16' or 'fp32'")
    return precision


def peak_memory(device: torch.device) -> int:
    """Bytes: the caching allocator's peak on a GPU; on a CPU the process's peak resident memory."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is in bytes on macOS and in KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` on this machine, or None when nothing says it cannot.

    Its default backend builds kernels at run time: C++ on a CPU, Triton on a GPU. Without a C++ compiler or
    Triton the failure would come on the first forward pass, deep inside it; this says so beforehand.
    """
    if device.type == "cpu":
        candidates = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in candidates):
            return "no C++ compiler found (on a CPU torch.compile builds C++ kernels: install g++, or set CXX)"
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (on a GPU torch.compile builds Triton kernels)"
    return None


class CompiledOrEager:
    """``torch.compile(model)`` called like the model, that falls back to the model itself if compiling fails.

    Compiling happens on the first call (and again for a new input shape), so that is where it can fail: the
    failed call is run again eagerly, ``fallback_reason`` records why, ``on_fallback`` is told once, and every
    later call is eager. An error that is not the compiler's (a wrong shape, out of memory) happens again in
    the eager call and is raised from there, so it is not hidden.
    """

    def __init__(self, model: Callable[..., Any], on_fallback: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = torch.compile(model)
        self.on_fallback = on_fallback
        self.fallback_reason: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 -- the eager call below re-raises what is not the compiler's
                self.compiled = None
                self.fallback_reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}" \
                    if str(error).strip() else type(error).__name__
                if self.on_fallback is not None:
                    self.on_fallback(self.fallback_reason)
        return self.model(*args, **kwargs)
