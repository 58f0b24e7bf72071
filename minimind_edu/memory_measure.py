"""Measure the memory of real MiniMind training steps: exactly on CPU, with the allocator's counters on CUDA.

On CPU there is no ``max_memory_allocated``, so :class:`StorageTracker` watches every tensor storage that
PyTorch creates while a training step runs (a ``TorchDispatchMode`` sees every operator's outputs, forward,
backward and optimizer alike) and a weakref finalizer on each storage subtracts its bytes when PyTorch frees
it. The running sum of live storage bytes, and its peak, are then exact for the tensors PyTorch allocates.

What a CPU measurement tells about a GPU, and what it does not:
  * It does count every tensor the same Python code keeps alive on a GPU: weights, gradients, optimizer
    state, activations saved for backward, logits, the gradient buffers of backward. This is
    what ``torch.cuda.max_memory_allocated`` reports, minus allocator rounding (512-byte blocks) and minus
    anything a CUDA kernel allocates on its own.
  * It cannot see kernel choice: on CUDA, ``scaled_dot_product_attention`` runs a flash / memory-efficient
    kernel whose saved tensors (log-sum-exp, RNG state) differ a little from the CPU kernel's. AdamW is the
    trainer's own (``train.make_optimizer``: the fused kernel on CPU and CUDA, which makes no temporaries);
    PyTorch's defaults, ``foreach`` (CUDA: one big batch of temporaries) and the per-tensor loop (CPU), can
    be measured with ``optimizer="adamw-foreach"`` / ``"adamw-forloop"`` and the estimator models all three.
  * It cannot see memory a kernel allocates inside C++ without returning it as a tensor. The fused CPU AdamW
    kernel (ATen's cpu/FusedAdamKernel.cpp) updates m, v and each weight element by element in place and
    allocates nothing (its ``grad.contiguous()`` is a no-op for our contiguous gradients), so none is missed
    there. The fused CUDA kernel reads the same way, but this course has no GPU to check it on.
  * It cannot see the CUDA context, the cuBLAS workspace or the caching allocator's reserved-but-unused
    memory, which nvidia-smi shows on top. Those are reported separately by the estimator, as approximations.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .device import autocast_dtype, check_precision
from .model import MiniMind, ModelConfig
from .optim import OPTIMIZERS, optimizer_by_name

PHASES = ("forward", "backward", "optimizer")


class StorageTracker(TorchDispatchMode):
    """Counts the bytes of every live tensor storage created by an operator while the mode is active.

    ``watch(tensor)`` adds storages that existed before (weights, optimizer state). ``phase`` names the
    current phase; ``phase_peaks[phase]`` is the largest live total seen while it was current.
    """

    def __init__(self, record_timeline: bool = False):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self._sizes: dict[int, int] = {}  # key of a live storage -> bytes counted for it
        self._refs: dict[int, weakref.ref] = {}
        self.timeline: list[tuple[str, int]] | None = [] if record_timeline else None

    # Storages are keyed by their (stable, unique while alive) data pointer; the weakref callback removes them.
    def _add(self, storage: torch.UntypedStorage) -> None:
        if storage.device.type == "meta":
            return
        nbytes = storage.nbytes()
        key = storage.data_ptr()
        if nbytes == 0 or key == 0:
            return
        old = self._sizes.get(key)
        if old is not None:
            if old != nbytes:  # an out= op resized the storage in place
                self.live += nbytes - old
                self._sizes[key] = nbytes
                self._note()
            return
        self._sizes[key] = nbytes
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self.live += nbytes
        self._note()

    def _free(self, key: int) -> None:
        nbytes = self._sizes.pop(key, None)
        self._refs.pop(key, None)
        if nbytes is not None:
            self.live -= nbytes

    def _note(self) -> None:
        if self.live > self.peak:
            self.peak = self.live
        if self.live > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.live

    def watch(self, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())

    def set_phase(self, name: str) -> None:
        self.phase = name
        self.phase_peaks[name] = max(self.phase_peaks.get(name, 0), self.live)

    def reset_peaks(self) -> None:
        self.peak = self.live
        self.phase_peaks = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())
        if self.timeline is not None:
            self.timeline.append((self.phase, self.live))
        return out


@dataclass
class Measurement:
    """A measured training step. ``peak_bytes`` is the tracked (CPU) or allocated (CUDA) peak."""

    device: str
    fits: bool
    peak_bytes: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)
    reserved_bytes: int | None = None  # CUDA: max_memory_reserved
    driver_bytes: int | None = None  # CUDA: total - free as the driver sees it (what nvidia-smi shows)
    seconds: float = 0.0
    error: str | None = None
    timeline: list[tuple[str, int]] | None = None


def _build(cfg: ModelConfig, attention: str | None, checkpointing: bool, optimizer: str, device: str, seed: int):
    torch.manual_seed(seed)
    if attention and attention != cfg.attention:
        cfg = replace(cfg, attention=attention)
    model = MiniMind(cfg).to(device)
    model.train()
    model.gradient_checkpointing = checkpointing
    return cfg, model, optimizer_by_name(model, optimizer)


def _train_step(model, opt, scaler, ids, targets, precision, device, grad_accum_steps, on_phase):
    """The course's training step (``train.Trainer.train_step``): forward under autocast, backward, optimizer
    step, zero grads. Gradient clipping is left out: its temporaries are one scalar per tensor."""
    dtype = autocast_dtype(precision)
    for _ in range(grad_accum_steps):
        on_phase("forward")
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(ids, targets).loss  # the logits are not kept: only the loss leaves forward
        if grad_accum_steps > 1:
            loss = loss / grad_accum_steps
        on_phase("backward")
        (scaler.scale(loss) if scaler else loss).backward()
        del loss
    on_phase("optimizer")
    if opt is not None:
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    model.zero_grad(set_to_none=True)


def measure(
    model_config: ModelConfig,
    batch_size: int,
    seq_len: int,
    *,
    precision: str = "bf16",
    optimizer: str = "adamw",
    attention: str | None = None,
    checkpointing: bool = False,
    grad_accum_steps: int = 1,
    device: str | None = None,
    seed: int = 0,
    record_timeline: bool = False,
) -> Measurement:
    """Run real training steps of MiniMind and measure the peak memory of the second one.

    The first step creates the optimizer state; the second is measured, phase by phase (forward, backward,
    optimizer). ``device`` defaults to CUDA when available. On CUDA the numbers are the caching allocator's
    ``max_memory_allocated`` / ``max_memory_reserved`` and the driver's used memory; an out-of-memory error
    returns ``fits=False``. On CPU the peak is the exact sum of live tensor storages (see the module docs
    for what that can and cannot tell about a GPU). ``optimizer``: "adamw" is the trainer's own
    (``train.make_optimizer``, fused on CPU and CUDA), "adamw-fused" / "adamw-foreach" / "adamw-forloop" force
    one of PyTorch's AdamW kernels, "sgd" is SGD with momentum 0.9, "none" skips the step.
    """
    check_precision(precision)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if batch_size < 1 or seq_len < 1 or grad_accum_steps < 1:
        raise ValueError(f"batch_size, seq_len and grad_accum_steps must be >= 1; got {batch_size}, {seq_len}, {grad_accum_steps}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return _measure_cuda(model_config, batch_size, seq_len, precision, optimizer, attention,
                             checkpointing, grad_accum_steps, seed)
    start = time.perf_counter()
    cfg, model, opt = _build(model_config, attention, checkpointing, optimizer, "cpu", seed)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=gen)
    _train_step(model, opt, scaler, ids, targets, precision, "cpu", grad_accum_steps, lambda _: None)

    tracker = StorageTracker(record_timeline)
    tracker.watch(ids, targets, *model.parameters(), *model.buffers())
    for state in (opt.state.values() if opt is not None else ()):
        tracker.watch(*[v for v in state.values() if isinstance(v, torch.Tensor)])
    if scaler is not None:
        tracker.watch(scaler._scale, scaler._growth_tracker)
    with tracker:
        tracker.reset_peaks()
        _train_step(model, opt, scaler, ids, targets, precision, "cpu", grad_accum_steps, tracker.set_phase)
    return Measurement(device="cpu", fits=True, peak_bytes=tracker.peak,
                       phase_peaks={k: v for k, v in tracker.phase_peaks.items() if k in PHASES},
                       seconds=time.perf_counter() - start, timeline=tracker.timeline)


def _measure_cuda(cfg, batch_size, seq_len, precision, optimizer, attention, checkpointing,
                  grad_accum_steps, seed) -> Measurement:
    start = time.perf_counter()
    model = opt = ids = targets = None
    try:
        cfg, model, opt = _build(cfg, attention, checkpointing, optimizer, "cuda", seed)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device="cuda")
        targets = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device="cuda")
        _train_step(model, opt, scaler, ids, targets, precision, "cuda", grad_accum_steps, lambda _: None)
        torch.cuda.synchronize()
        phase_peaks: dict[str, int] = {}
        current = {"phase": None, "reserved": 0}

        def on_phase(name):  # close the previous phase's peaks, open the next
            torch.cuda.synchronize()
            if current["phase"] is not None:
                prev = current["phase"]
                phase_peaks[prev] = max(phase_peaks.get(prev, 0), torch.cuda.max_memory_allocated())
            # read before the reset below, which would bring the reserved peak down to what is reserved now
            current["reserved"] = max(current["reserved"], torch.cuda.max_memory_reserved())
            torch.cuda.reset_peak_memory_stats()
            current["phase"] = name

        torch.cuda.reset_peak_memory_stats()
        _train_step(model, opt, scaler, ids, targets, precision, "cuda", grad_accum_steps, on_phase)
        on_phase(None)
        free, total = torch.cuda.mem_get_info()
        return Measurement(device="cuda", fits=True, peak_bytes=max(phase_peaks.values()), phase_peaks=phase_peaks,
                           reserved_bytes=current["reserved"], driver_bytes=total - free,
                           seconds=time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError as err:
        return Measurement(device="cuda", fits=False, error=f"does not fit: {str(err).splitlines()[0]}",
                           seconds=time.perf_counter() - start)
    finally:
        del model, opt, ids, targets
        torch.cuda.empty_cache()
