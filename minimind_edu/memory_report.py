"""The memory of a training step as ``minimind-edu memory`` reports it: the estimate, an optional measurement on
this machine and, for a GPU card, whether the step fits and the largest batch that does.

Kept apart from the command line so that the report is a typed value a notebook or a test can build and read,
and apart from :mod:`minimind_edu.memory` because printing is not estimating.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import InvalidArgument
from .memory import GiB, GPUCard, MemoryEstimate, MiB, estimate_step, format_table, get_gpu, largest_batch_for
from .memory_measure import Measurement, StepSpec, available_ram_bytes, default_device, measure_step
from .model import ModelConfig


@dataclass
class MemoryReport:
    """One step's estimate, with a measurement and a GPU card's verdict when they were asked for."""

    model_name: str  # how the model is named in the text's first line (the command line: its preset)
    spec: StepSpec
    estimate: MemoryEstimate
    measured: Measurement | None = None
    gpu: GPUCard | None = None
    largest_batch: int | None = None  # on ``gpu``, at this step's sequence length

    def to_dict(self) -> dict:
        """Every term in bytes (:meth:`MemoryEstimate.to_dict`), with ``measured`` and ``fit`` when present."""
        out = self.estimate.to_dict()
        m = self.measured
        if m is not None:
            relative_error = (self.estimate.peak_bytes - m.peak_bytes) / m.peak_bytes if m.peak_bytes else None
            out["measured"] = {"device": m.device, "fits": m.fits, "peak_bytes": m.peak_bytes,
                               "phase_peaks": m.phase_peaks, "error": m.error, "relative_error": relative_error}
        if self.gpu is not None:
            out["fit"] = {"gpu": self.gpu.name, "capacity_bytes": self.gpu.memory_bytes,
                          "fits": self.estimate.fits(self.gpu), "largest_batch": self.largest_batch}
        return out

    def format(self) -> str:
        """The report as text: a title line, the breakdown table, the measurement and the GPU's verdict."""
        spec, est, m = self.spec, self.estimate, self.measured
        lines = [f"{self.model_name} ({est.num_parameters:,} parameters), batch {spec.batch_size} x {spec.seq_len} "
                 f"tokens, {spec.precision}, {est.attention} attention, optimizer {spec.optimizer}"
                 + (", checkpointing" if spec.checkpointing else "")
                 + (f"; per GPU of {spec.world_size} ({spec.strategy})" if spec.world_size > 1 else ""),
                 format_table(est, m.peak_bytes if m and m.fits else None),
                 f"attention: {est.kernel_description}" + (f" on {self.gpu.name}" if self.gpu else "")]
        if est.worst_routing_peak_bytes is not None:
            lines.append(f"MoE routing: the estimate assumes balanced experts; if every token chose the same ones, "
                         f"the peak would be {est.worst_routing_peak_bytes / MiB:.1f} MiB (a bound)")
        if est.calibration:
            lines.append(f"CUDA overhead: {est.calibration}")
        if m is not None and not m.fits:
            lines.append(f"measured on {m.device}: {m.error}")
        elif m is not None:
            phases = ", ".join(f"{phase} {nbytes / MiB:.1f} MiB" for phase, nbytes in m.phase_peaks.items())
            lines.append(f"(measured on {m.device}: {phases})")
        if self.gpu is not None:
            verdict = "fits" if est.fits(self.gpu) else "does NOT fit"
            lines.append(f"{verdict} on {self.gpu.name} ({self.gpu.memory_gb:.0f} GB); largest batch that fits at "
                         f"seq {spec.seq_len}: {self.largest_batch}")
        return "\n".join(lines)


def refuse_if_it_cannot_fit_in_ram(estimated_bytes: int) -> None:
    """Refuse (``InvalidArgument("measure", ...)``) a CPU measurement whose estimate exceeds the RAM available
    now: it would swap, or be killed by the kernel's out-of-memory killer, instead of answering."""
    free = available_ram_bytes()
    if free is not None and estimated_bytes > free:
        raise InvalidArgument("measure", f"refused: the step is estimated at {estimated_bytes / GiB:.1f} GiB but this "
                              f"machine has {free / GiB:.1f} GiB of RAM available; choose a smaller batch, "
                              "sequence or model to measure")


def memory_report(model_config: ModelConfig, spec: StepSpec, gpu: str | GPUCard | float | None = None,
                  measure: bool = False, model_name: str = "model") -> MemoryReport:
    """Estimate ``spec``, for CUDA when a ``gpu`` card (a preset name, a GPUCard or GB) is given; measure it on
    this machine's default device if ``measure``; for a card, find the largest batch that fits at its length."""
    if measure and spec.world_size > 1:
        raise InvalidArgument("measure", "measures one process on this machine; a per-GPU figure for several GPUs "
                              "is measured by tests/test_memory_sharded.py under torchrun")
    card = get_gpu(gpu) if gpu is not None else None
    if card is not None:
        spec = replace(spec, device="cuda")
    est = estimate_step(model_config, spec, card)
    measured = None
    if measure:
        here = replace(spec, device=default_device())
        if here.device == "cpu":
            refuse_if_it_cannot_fit_in_ram(estimate_step(model_config, here).peak_bytes)
        measured = measure_step(model_config, here)
    largest = largest_batch_for(model_config, spec, card) if card is not None else None
    return MemoryReport(model_name, spec, est, measured, card, largest)


def save_timeline(model_config: ModelConfig, spec: StepSpec, path: str, model_name: str = "model") -> str:
    """Record one CPU step's memory timeline (:mod:`minimind_edu.memory_timeline`), save it as a picture at
    ``path``, and say where and what its peak was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .memory_timeline import plot_timeline, record_timeline

    cpu = replace(spec, device="cpu")
    refuse_if_it_cannot_fit_in_ram(estimate_step(model_config, cpu).peak_bytes)
    timeline = record_timeline(model_config, cpu)
    fig, ax = plt.subplots(figsize=(11, 5))
    plot_timeline(timeline, ax, f"{model_name}: batch {spec.batch_size} x {spec.seq_len}, {spec.precision}, "
                  "memory after every operator of one training step (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return (f"timeline of {len(timeline.ops)} operators saved to {path}; its peak {timeline.peak / MiB:.1f} MiB is "
            "the measured peak")
