"""A memory timeline of one real training step: the bytes alive after every operation, by what they are.

The estimate (:mod:`minimind_edu.memory_moments`) names a few moments that can hold a step's peak; this module
shows the whole step around them. It runs one measured CPU step (:func:`minimind_edu.memory_measure.measure_step`)
with a tracker that remembers, for every tensor storage, when it was made and freed and what it is: weights
(with the batch and the RoPE tables), optimizer state, gradients, the activations each layer saved for backward,
what the LM head block saved (final norm, LM head, cross-entropy), and temporaries (everything else: casts,
gradients in flight, the optimizer's scratch). Stacked, the categories add up to the tracker's live total, so the
timeline's highest point is exactly :func:`~minimind_edu.memory_measure.measure`'s peak; the estimate's moments
are drawn over it. (On CUDA, ``torch.cuda.memory._record_memory_history()`` and ``_snapshot()`` give the same
picture from the allocator; the course does not draw that one yet.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .memory_measure import Measurement, StepSpec, StorageTracker, measure_step
from .model import ModelConfig

FIXED = ("weights", "optimizer state", "gradients")


class TimelineTracker(StorageTracker):
    """A :class:`StorageTracker` that logs every allocation and free, and tags each storage by what it is."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, str]] = []  # (phase, operator) of every operator run
        self.events: list[tuple[int, int, int]] = []  # (operator index, allocation id, +bytes or -bytes)
        self.tags: dict[int, str] = {}  # allocation id -> category
        self._alloc: dict[int, int] = {}  # storage key -> allocation id of the live storage there
        self._next_id = 0
        self._where: list[str] = []
        self._model = None
        self._saving = None

    def attach(self, model: torch.nn.Module, optimizer) -> None:
        """Tag what exists now (called before the step is tracked) and watch the model's layers."""
        self._model = model
        for i, layer in enumerate(model.layers):
            layer.register_forward_pre_hook(lambda _m, _a, i=i: self._where.append(f"layer {i} activations"))
            layer.register_forward_hook(self._leave_layer)
        self._optimizer = optimizer

    def _leave_layer(self, _module, _args, _output) -> None:
        self._where.pop()

    def _add(self, storage: torch.UntypedStorage) -> None:
        key, known = storage.data_ptr(), storage.data_ptr() in self._sizes
        before = self.live
        super()._add(storage)
        if not known and key in self._sizes:
            self._alloc[key] = self._next_id
            self.events.append((len(self.ops), self._next_id, self.live - before))
            self._next_id += 1

    def _free(self, key: int) -> None:
        nbytes = self._sizes.get(key)
        super()._free(key)
        if nbytes is not None:
            self.events.append((len(self.ops), self._alloc.pop(key), -nbytes))

    def tag(self, tensor: torch.Tensor, category: str, overwrite: bool = False) -> None:
        alloc = self._alloc.get(tensor.untyped_storage().data_ptr())
        if alloc is not None and (overwrite or alloc not in self.tags):
            self.tags[alloc] = category

    def set_phase(self, name: str) -> None:
        super().set_phase(name)
        if name == "optimizer" and self._model is not None:  # every gradient exists now
            for p in self._model.parameters():
                if p.grad is not None:
                    self.tag(p.grad, "gradients", overwrite=True)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.tag(t, self._where[-1] if self._where else "LM head block")
        return t

    def __enter__(self):
        # what exists before the step: the optimizer's state, and the weights with the batch and RoPE tables
        for state in (self._optimizer.state.values() if getattr(self, "_optimizer", None) is not None else ()):
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    self.tag(v, "optimizer state")
        for alloc in self._alloc.values():
            self.tags.setdefault(alloc, "weights")
        self._saving = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saving.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        self._saving.__exit__(*exc)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((self.phase, str(func.overloadpacket.__name__)))
        return super().__torch_dispatch__(func, types, args, kwargs)


@dataclass
class Timeline:
    """Bytes alive after every operator of one measured step, stacked by category."""

    ops: list[tuple[str, str]]
    series: dict[str, list[int]]  # category -> bytes after each operator
    measurement: Measurement
    moments: list[tuple[str, int]] = field(default_factory=list)  # (the estimate's moment, bytes alive then)

    @property
    def total(self) -> list[int]:
        return [sum(values) for values in zip(*self.series.values())]

    @property
    def peak(self) -> int:
        return max(self.total)


def record_timeline(model_config: ModelConfig, spec: StepSpec, seed: int = 0) -> Timeline:
    """Run one CPU training step ``spec`` and return its :class:`Timeline`, with the estimate's moments."""
    from .memory_moments import StepSizes, static_terms, step_moments  # the estimate, to draw over the curve

    if spec.device != "cpu":
        raise ValueError("the timeline is recorded by the CPU tracker: use device='cpu'")
    tracker = TimelineTracker()
    measurement = measure_step(model_config, spec, seed, tracker=tracker)
    layers = [f"layer {i} activations" for i in range(model_config.num_layers)]
    categories = list(FIXED) + layers + ["LM head block", "temporaries"]
    current = dict.fromkeys(categories, 0)
    series = {c: [] for c in categories}
    # Every event carries the number of operators run when it happened: an operator's outputs, and what is
    # freed after it, before the next one. Each point of the timeline is the fullest instant of its window.
    events, e = tracker.events, 0
    for window in range(len(tracker.ops) + 1):
        best, snapshot = sum(current.values()), dict(current)
        while e < len(events) and events[e][0] == window:
            _, alloc, delta = events[e]
            current[tracker.tags.get(alloc, "temporaries")] += delta
            e += 1
            if delta > 0 and sum(current.values()) > best:
                best, snapshot = sum(current.values()), dict(current)
        if window > 0:
            for c in categories:
                series[c].append(snapshot[c])
    sizes = StepSizes(model_config, spec)
    static = sum(static_terms(sizes).values())
    moments = [(m.name, static + sum(m.terms.values())) for m in step_moments(sizes)]
    return Timeline(tracker.ops, series, measurement, moments)


def plot_timeline(timeline: Timeline, ax=None, title: str | None = None):
    """A stacked area of the timeline (MiB) with the estimate's moments as dotted lines; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5))
    x = range(1, len(timeline.ops) + 1)
    shown = {c: [v / 2**20 for v in s] for c, s in timeline.series.items() if max(s, default=0) > 0}
    ax.stackplot(x, *shown.values(), labels=list(shown), alpha=0.85)
    peak = timeline.peak / 2**20
    ax.axhline(peak, color="k", lw=0.8, label=f"measured peak {peak:.1f} MiB")
    est = max(b for _, b in timeline.moments) / 2**20 if timeline.moments else None
    if est is not None:
        ax.axhline(est, color="C3", ls=":", lw=1.2, label=f"estimate {est:.1f} MiB")
    boundaries = [i for i in range(1, len(timeline.ops)) if timeline.ops[i][0] != timeline.ops[i - 1][0]]
    for i in boundaries:
        ax.axvline(i + 0.5, color="grey", lw=0.6)
        ax.text(i + 1, peak * 1.02, timeline.ops[i][0], fontsize=8, color="grey")
    ax.set_xlabel("operator (in the order it ran)")
    ax.set_ylabel("MiB alive")
    ax.set_ylim(0, peak * 1.12)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title(title or "memory after every operator of one training step", fontsize=10)
    return ax
