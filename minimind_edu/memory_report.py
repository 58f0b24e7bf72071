"""The memory of a training step as ``minimind-edu memory`` reports it: the estimate, an optional measurement on
this machine and, for a GPU card, whether the step fits and the largest batch that does.

Kept apart from the command line so that the report is a typed value a notebook or a test can build and read,
and apart from :mod:`minimind_edu.memory` because printing is not estimating.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import GPUCard, MemoryEstimate, MiB, estimate_step, format_table, get_gpu, largest_batch_for
from .memory_measure import Measurement, StepSpec, default_device, measure_step
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
                 + (", checkpointing" if spec.checkpointing else ""),
                 format_table(est, m.peak_bytes if m and m.fits else None)]
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


def memory_report(model_config: ModelConfig, spec: StepSpec, gpu: str | GPUCard | float | None = None,
                  measure: bool = False, model_name: str = "model") -> MemoryReport:
    """Estimate ``spec``, for CUDA when a ``gpu`` card (a preset name, a GPUCard or GB) is given; measure it on
    this machine's default device if ``measure``; for a card, find the largest batch that fits at its length."""
    card = get_gpu(gpu) if gpu is not None else None
    if card is not None:
        spec = replace(spec, device="cuda")
    est = estimate_step(model_config, spec, card)
    measured = measure_step(model_config, replace(spec, device=default_device())) if measure else None
    largest = largest_batch_for(model_config, spec, card) if card is not None else None
    return MemoryReport(model_name, spec, est, measured, card, largest)
