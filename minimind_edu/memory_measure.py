"""Measure the memory of real MiniMind training steps: exactly on CPU, with the allocator's counters on CUDA.

The estimator in :mod:`minimind_edu.memory` is only as good as the step it is checked against, so this module
runs that step for real: the same model, the optimizer :func:`minimind_edu.optim.make_optimizer` builds (or
one named in :data:`~minimind_edu.optim.OPTIMIZERS`), autocast as the trainer uses it. :class:`StepSpec`,
the description of one step, lives here for the same reason: the estimate models what is measured here.

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
    trainer's own (``optim.make_optimizer``: the fused kernel on CPU and CUDA, which makes no temporaries);
    PyTorch's defaults, ``foreach`` (CUDA: one big batch of temporaries) and the per-tensor loop (CPU), can
    be measured with ``optimizer="adamw-foreach"`` / ``"adamw-forloop"`` and the estimator models all three.
  * It cannot see memory a kernel allocates inside C++ without returning it as a tensor. The fused CPU AdamW
    kernel (ATen's cpu/FusedAdamKernel.cpp) updates m, v and each weight element by element in place and
    allocates nothing (its ``grad.contiguous()`` is a no-op for our contiguous gradients), so none is missed
    there. The fused CUDA kernel's source reads the same way; that one is checked only by running the
    measurement on a GPU (``benchmarks/memory_grid_gpu.py``).
  * It cannot see the CUDA context, the cuBLAS workspace or the caching allocator's reserved-but-unused
    memory, which nvidia-smi shows on top. Those are reported separately by the estimator, as approximations.

At about 420 lines it is one idea: a step's shape (``StepSpec``) and the ways to run and measure exactly that
step (CPU tracker, CUDA allocator, one rank of a sharded step) belong together.
"""
from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .device import PRECISIONS, autocast_dtype
from .distributed import ProcessGroup
from .model import MiniMind, ModelConfig
from .optim import OPTIMIZERS, optimizer_by_name
from .sharding import STRATEGIES, gradient_sync, shard

PHASES = ("forward", "backward", "optimizer")
ATTENTIONS = ("sdpa", "naive")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class StepSpec:
    """One training step: what :func:`measure_step` runs and :func:`minimind_edu.memory.estimate_step` models.

    ``precision``: "fp32", or "bf16"/"fp16" autocast with fp32 master weights (fp16 adds a grad scaler).
    ``optimizer``: one of :data:`~minimind_edu.optim.OPTIMIZERS`. ``attention``: "sdpa" or "naive"; None keeps
    the model config's. ``checkpointing`` recomputes each block in backward. ``grad_accum_steps`` micro-batches
    of ``batch_size`` make one optimizer step. ``device``: "cpu" or "cuda", where the step runs (measured) or
    is meant to run (estimated: CUDA adds the framework overhead and picks CUDA's AdamW kernel).
    ``world_size`` ranks train data-parallel with ``strategy`` (:data:`~minimind_edu.sharding.STRATEGIES`),
    each on ``batch_size`` sequences: the step is one rank's (its GPU's); 1 is a single GPU, whatever the strategy.
    A bad value raises ``ValueError`` naming the field and what it may be.
    """

    batch_size: int
    seq_len: int
    precision: str = "bf16"
    optimizer: str = "adamw"
    attention: str | None = None
    checkpointing: bool = False
    grad_accum_steps: int = 1
    device: str = "cpu"
    world_size: int = 1
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "grad_accum_steps", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, allowed in (("precision", PRECISIONS), ("optimizer", OPTIMIZERS), ("attention", ATTENTIONS),
                              ("device", DEVICES), ("strategy", STRATEGIES)):
            value = getattr(self, name)
            if value not in allowed and not (name == "attention" and value is None):
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.world_size > 1 and self.strategy != "ddp" and self.optimizer != "adamw":
            raise ValueError(f"strategy {self.strategy!r} shards the trainer's AdamW: optimizer must be 'adamw', "
                             f"got {self.optimizer!r}")


def available_ram_bytes() -> int | None:
    """Memory the kernel can give a new allocation without swapping: /proc/meminfo's MemAvailable (Linux), else
    free pages times the page size (``os.sysconf``); None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_device() -> str:
    """Where a measurement runs unless told: "cuda" when this torch sees a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


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


def measure(model_config: ModelConfig, batch_size: int, seq_len: int, *, precision: str = "bf16",
            optimizer: str = "adamw", attention: str | None = None, checkpointing: bool = False,
            grad_accum_steps: int = 1, device: str | None = None, seed: int = 0,
            record_timeline: bool = False) -> Measurement:
    """:func:`measure_step` with the step given as keywords (see :class:`StepSpec`); ``device=None`` picks
    :func:`default_device`."""
    spec = StepSpec(batch_size, seq_len, precision, optimizer, attention, checkpointing, grad_accum_steps,
                    device or default_device())
    return measure_step(model_config, spec, seed=seed, record_timeline=record_timeline)


def measure_step(model_config: ModelConfig, spec: StepSpec, seed: int = 0,
                 record_timeline: bool = False, tracker: StorageTracker | None = None) -> Measurement:
    """Run real training steps of MiniMind and measure the peak memory of the second one.

    The first step creates the optimizer state; the second is measured, phase by phase (forward, backward,
    optimizer). On CUDA the numbers are the caching allocator's ``max_memory_allocated`` /
    ``max_memory_reserved`` and the driver's used memory; an out-of-memory error returns ``fits=False``. On
    CPU the peak is the exact sum of live tensor storages (see the module docs for what that can and cannot
    tell about a GPU); ``record_timeline`` keeps the live total after every operator. ``spec.optimizer``:
    "adamw" is the trainer's own (``optim.make_optimizer``, fused on CPU and CUDA), "adamw-fused" /
    "adamw-foreach" / "adamw-forloop" force one of PyTorch's AdamW kernels, "sgd" is SGD with momentum 0.9,
    "none" skips the step. ``tracker``: a CPU tracker to use (a subclass may ``attach(model, optimizer)`` to
    watch more, as :mod:`minimind_edu.memory_timeline` does).
    """
    if spec.device == "cuda":
        return _measure_cuda(model_config, spec, seed)
    return _measure_cpu(model_config, spec, seed, record_timeline, tracker)


def _build(cfg: ModelConfig, spec: StepSpec, seed: int) -> tuple[ModelConfig, MiniMind, torch.optim.Optimizer | None]:
    torch.manual_seed(seed)
    if spec.attention and spec.attention != cfg.attention:
        cfg = replace(cfg, attention=spec.attention)
    model = MiniMind(cfg).to(spec.device)
    model.train()
    model.gradient_checkpointing = spec.checkpointing
    return cfg, model, optimizer_by_name(model, spec.optimizer)


def _train_step(model: MiniMind, opt: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler | None,
                ids: torch.Tensor, targets: torch.Tensor, spec: StepSpec,
                on_phase: Callable[[str], None]) -> None:
    """The course's training step (``train.Trainer.train_step``): forward under autocast, backward, optimizer
    step, zero grads. Gradient clipping is left out: its temporaries are one scalar per tensor."""
    dtype = autocast_dtype(spec.precision)
    for _ in range(spec.grad_accum_steps):
        on_phase("forward")
        with torch.autocast(spec.device, dtype=dtype, enabled=dtype is not None):
            loss = model(ids, targets).loss  # the logits are not kept: only the loss leaves forward
        if spec.grad_accum_steps > 1:
            loss = loss / spec.grad_accum_steps
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


def _measure_cpu(model_config: ModelConfig, spec: StepSpec, seed: int, record_timeline: bool,
                 tracker: StorageTracker | None = None) -> Measurement:
    start = time.perf_counter()
    cfg, model, opt = _build(model_config, spec, seed)
    scaler = torch.amp.GradScaler("cpu") if spec.precision == "fp16" else None
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), generator=gen)
    _train_step(model, opt, scaler, ids, targets, spec, lambda _: None)

    tracker = tracker or StorageTracker(record_timeline)
    if hasattr(tracker, "attach"):
        tracker.attach(model, opt)
    # what exists before the measured step starts: the batch, weights, RoPE tables, optimizer and scaler state
    tracker.watch(ids, targets, *model.parameters(), *model.buffers())
    for state in (opt.state.values() if opt is not None else ()):
        tracker.watch(*[v for v in state.values() if isinstance(v, torch.Tensor)])
    if scaler is not None:  # GradScaler keeps its two state tensors private
        tracker.watch(scaler._scale, scaler._growth_tracker)
    with tracker:
        tracker.reset_peaks()
        _train_step(model, opt, scaler, ids, targets, spec, tracker.set_phase)
    return Measurement(device="cpu", fits=True, peak_bytes=tracker.peak,
                       phase_peaks={k: v for k, v in tracker.phase_peaks.items() if k in PHASES},
                       seconds=time.perf_counter() - start, timeline=tracker.timeline)


def _measure_cuda(model_config: ModelConfig, spec: StepSpec, seed: int) -> Measurement:
    start = time.perf_counter()
    model = opt = ids = targets = None
    try:
        cfg, model, opt = _build(model_config, spec, seed)
        scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
        ids = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), device="cuda")
        targets = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), device="cuda")
        _train_step(model, opt, scaler, ids, targets, spec, lambda _: None)
        torch.cuda.synchronize()
        phase_peaks: dict[str, int] = {}
        current: dict = {"phase": None, "reserved": 0}

        def on_phase(name: str | None) -> None:  # close the previous phase's peaks, open the next
            torch.cuda.synchronize()
            if current["phase"] is not None:
                prev = current["phase"]
                phase_peaks[prev] = max(phase_peaks.get(prev, 0), torch.cuda.max_memory_allocated())
            # read before the reset below, which would bring the reserved peak down to what is reserved now
            current["reserved"] = max(current["reserved"], torch.cuda.max_memory_reserved())
            torch.cuda.reset_peak_memory_stats()
            current["phase"] = name

        torch.cuda.reset_peak_memory_stats()
        _train_step(model, opt, scaler, ids, targets, spec, on_phase)
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


# --- one rank of a data-parallel step -----------------------------------------------------------------------
class ShardedStorageTracker(StorageTracker):
    """A :class:`StorageTracker` for DDP, ZeRO-1 and FSDP2 steps. FSDP2 frees a block's gathered weights by
    shrinking their storage to 0 bytes and regrows it for the next all-gather (``storage.resize_``, which no
    operator reports), so storages are keyed by their identity rather than their address, and after every
    operator the live total is summed again from every tracked storage's current size. ``DTensor`` outputs
    (FSDP's sharded parameters and gradients) are counted by their local shard."""

    def _add(self, storage: torch.UntypedStorage) -> None:
        if storage.device.type == "meta":
            return
        key = storage._cdata
        if key in self._refs:
            return
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self._sizes[key] = storage.nbytes()
        self._resum()

    def _free(self, key: int) -> None:
        self._refs.pop(key, None)
        self._sizes.pop(key, None)
        self.live = sum(self._sizes.values())

    def _resum(self) -> None:
        for key, ref in self._refs.items():
            storage = ref()
            if storage is not None:
                self._sizes[key] = storage.nbytes()
        self.live = sum(self._sizes.values())
        self._note()

    def watch(self, *tensors: torch.Tensor | None) -> None:
        super().watch(*[getattr(t, "_local_tensor", t) for t in tensors])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(getattr(t, "_local_tensor", t).untyped_storage())
        self._resum()
        if self.timeline is not None:
            self.timeline.append((self.phase, self.live))
        return out


def measure_sharded_step(model_config: ModelConfig, spec: StepSpec, group: ProcessGroup,
                         seed: int = 0) -> Measurement:
    """This rank's peak memory over the second of two training steps under ``spec.strategy`` (CPU, gloo).

    Every rank of a process group of ``spec.world_size`` calls it (under ``torchrun``): the model is built, then
    :func:`minimind_edu.sharding.shard` wraps it while the tracker watches, so DDP's gradient buckets, ZeRO's
    optimizer shard and FSDP's sharded parameters are all counted. The step is the trainer's: forward under
    autocast, backward, AdamW, no clipping (its temporaries are one scalar per tensor)."""
    if spec.device != "cpu":
        raise ValueError("measure_sharded_step measures on the CPU (gloo); the estimate covers CUDA")
    if spec.world_size != group.world_size:
        raise ValueError(f"spec.world_size={spec.world_size} but the process group has {group.world_size} ranks")
    if spec.precision == "fp16":
        raise ValueError("measure_sharded_step: fp16's grad scaler is not measured under sharding; use bf16 or fp32")
    start = time.perf_counter()
    torch.manual_seed(seed)
    cfg = replace(model_config, attention=spec.attention) if spec.attention else model_config
    model = MiniMind(cfg)
    model.train()
    model.gradient_checkpointing = spec.checkpointing
    gen = torch.Generator().manual_seed(seed + 1 + group.rank)
    ids = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len), generator=gen)
    tracker = ShardedStorageTracker()
    tracker.watch(ids, targets, *model.parameters(), *model.buffers())
    dtype = autocast_dtype(spec.precision)
    with tracker:
        sharded = shard(model, group, spec.strategy, lr=1e-4, weight_decay=0.1, precision=spec.precision)

        def step(on_phase: Callable[[str], None]) -> None:
            for micro in range(spec.grad_accum_steps):
                on_phase("forward")
                with gradient_sync(sharded, micro == spec.grad_accum_steps - 1):
                    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                        loss = sharded.forward_model(ids, targets).loss
                    if spec.grad_accum_steps > 1:
                        loss = loss / spec.grad_accum_steps
                    on_phase("backward")
                    loss.backward()
                    del loss
            on_phase("optimizer")
            sharded.optimizer.step()
            sharded.optimizer.zero_grad(set_to_none=True)

        step(lambda _: None)
        tracker.reset_peaks()
        step(tracker.set_phase)
    return Measurement(device="cpu", fits=True, peak_bytes=tracker.peak,
                       phase_peaks={k: v for k, v in tracker.phase_peaks.items() if k in PHASES},
                       seconds=time.perf_counter() - start)
