"""How much memory does training MiniMind take, and will it fit on a given GPU? A term-by-term estimate.

A measurement (:func:`measure`) answers for one configuration on the machine at hand; the estimate answers at
once for any batch, sequence length, model size or GPU card, and says *why* each byte is there. It adds the
largest of a step's moments (:mod:`minimind_edu.memory_moments`) to what lives through the whole step and
reports the sum term by term; ``tests/test_memory.py`` holds it within 3% of measured steps on a grid of sizes.

A CPU cannot show what CUDA adds on top (the context, the cuBLAS workspace, the caching allocator's slack), so
those are documentation constants, not measured; they are reported apart in ``overhead`` so both the
allocator's view (``torch.cuda.max_memory_allocated``) and the driver's (nvidia-smi) can be read.
"""
from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field, replace

from .errors import InvalidArgument
from .memory_calibration import Calibration, load_calibration
from .memory_kernels import KernelChoice, training_kernel
from .memory_measure import StepSpec
from .memory_moments import (
    StepSizes,
    head_block,
    saved_per_layer,
    sharded_step,
    static_terms,
    step_moments,
    worst_routing_sizes,
)
from .model import ModelConfig

GiB = 2**30
MiB = 2**20

# --- GPU cards ----------------------------------------------------------------------------------------------
# Capacities as nvidia-smi reports them (MiB). The framework overheads on a CUDA device are approximations
# taken from documentation, not measured; where they come from:
#   * CUDA context: the driver's per-process state plus PyTorch's kernels. With lazy module loading (default
#     since CUDA 11.7) it is typically 300-600 MiB; we take 500 MiB. Measure yours: nvidia-smi after
#     `torch.zeros(1, device="cuda")`, or run benchmarks/memory_grid_gpu.py which records it.
#   * cuBLAS workspace: PyTorch's default CUBLAS_WORKSPACE_CONFIG gives each handle ":4096:2:16:8" = 8.125 MiB,
#     32 MiB on Hopper (H100); cuBLASLt adds its own workspace (1-32 MiB). It comes from the caching allocator.
#   * allocator slack: the caching allocator rounds blocks (512 B, 2 MiB and 20 MiB segments) and keeps freed
#     blocks reserved; max_memory_reserved is commonly 5-15% above max_memory_allocated. We take 10% of what
#     the peak holds beyond the step-long terms (weights, buffers, batch, optimizer state), i.e. of its
#     gradients, low-precision weight copies, activations and transients: the memory a step allocates and
#     frees, where rounding and freed blocks arise. A rule of thumb.
CUDA_CONTEXT_BYTES = 500 * MiB
CUBLAS_WORKSPACE_BYTES = (8 + 1) * MiB  # cuBLAS + cuBLASLt
CUBLAS_WORKSPACE_HOPPER_BYTES = (32 + 32) * MiB
ALLOCATOR_SLACK_FRACTION = 0.10


@dataclass(frozen=True)
class GPUCard:
    """A GPU by its name, capacity and CUDA compute capability (which attention kernels it runs, whether it has
    bf16); Hopper cards get a larger cuBLAS workspace. ``capability=None``: unknown, taken as an A100-class 8.0."""

    name: str
    memory_mib: int
    hopper: bool = False
    capability: tuple[int, int] | None = None

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (Ampere, compute capability 8.0, and newer); older cards have fp16 only."""
        return self.capability is None or self.capability >= (8, 0)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    @property
    def memory_gb(self) -> float:
        return self.memory_mib / 1024


# Compute capabilities from NVIDIA's CUDA GPU list: Volta 7.0, Turing 7.5, Ampere 8.0 (A100) / 8.6 (RTX 30, A10),
# Ada 8.9 (RTX 40, L4), Hopper 9.0. The V100's capacities are the nominal 16 and 32 GiB (not checked on a card).
GPU_PRESETS: dict[str, GPUCard] = {
    "t4": GPUCard("T4 16GB (Colab)", 15360, capability=(7, 5)),
    "v100-16gb": GPUCard("V100 16GB", 16384, capability=(7, 0)),
    "v100-32gb": GPUCard("V100 32GB", 32768, capability=(7, 0)),
    "rtx-4060": GPUCard("RTX 4060 8GB", 8188, capability=(8, 9)),
    "rtx-3060": GPUCard("RTX 3060 12GB", 12288, capability=(8, 6)),
    "rtx-4070": GPUCard("RTX 4070 12GB", 12282, capability=(8, 9)),
    "rtx-4080": GPUCard("RTX 4080 16GB", 16376, capability=(8, 9)),
    "rtx-3090": GPUCard("RTX 3090 24GB", 24576, capability=(8, 6)),
    "rtx-4090": GPUCard("RTX 4090 24GB", 24564, capability=(8, 9)),
    "rtx-4090d": GPUCard("RTX 4090D 24GB", 24564, capability=(8, 9)),
    "a10": GPUCard("A10 24GB", 23028, capability=(8, 6)),
    "l4": GPUCard("L4 24GB", 23034, capability=(8, 9)),
    "a100-40gb": GPUCard("A100 40GB", 40960, capability=(8, 0)),
    "a100-80gb": GPUCard("A100 80GB", 81920, capability=(8, 0)),
    "h100-80gb": GPUCard("H100 80GB", 81559, hopper=True, capability=(9, 0)),
    "h200": GPUCard("H200 141GB", 143771, hopper=True, capability=(9, 0)),
}


def get_gpu(card: str | GPUCard | float) -> GPUCard:
    """A card by preset name, a :class:`GPUCard`, or a capacity in GB (``24`` -> a generic 24 GB card)."""
    if isinstance(card, GPUCard):
        return card
    if isinstance(card, (int, float)):
        if not 0 < card < float("inf"):  # NaN fails both comparisons
            raise InvalidArgument("gpu", f"must be a card's name or a positive size in GB, got {card:g}")
        return GPUCard(f"{card:g} GB GPU", int(card * 1024))
    if card not in GPU_PRESETS:
        raise InvalidArgument("gpu", f"{card!r} is not a known GPU; choose one of: {', '.join(GPU_PRESETS)} "
                              "(or give a size in GB)")
    return GPU_PRESETS[card]


# --- the breakdown ------------------------------------------------------------------------------------------
EXPLANATIONS = {
    "weights": "fp32 master weights (the tied embedding / LM head counted once)",
    "buffers": "RoPE cos and sin tables, fp32, max_position_embeddings x head_dim each",
    "batch": "input ids and targets, int64",
    "gradients": "fp32 gradients, one per weight "
                 "(alive at the peak only after backward made them, or when accumulating)",
    "optimizer_state": "AdamW keeps m and v (2 fp32 copies of the weights) and a step counter per tensor; "
                       "SGD momentum 1 copy",
    "low_precision_weights": "bf16/fp16 copies of the weight matrices made by autocast, saved for backward until used",
    "activations": "tensors the blocks saved for backward (per layer: norms, QK-norm, q/k/v, attention, SwiGLU or "
                   "router and experts, dropout masks, residual)",
    "head": "final norm, LM head input, fp32 log_softmax of the logits saved by cross-entropy",
    "transient": "buffers alive only at the peak moment (logits gradients, optimizer temporaries, FSDP's "
                 "gathered weights, ...)",
    "gradient_buckets": "DDP's flat buckets of gradients for the all-reduce (one more fp32 copy of all gradients)",
}
OVERHEAD_EXPLANATIONS = {
    "cuda_context": "CUDA context and loaded kernels (approx. 500 MiB; not measured here, varies with driver/GPU)",
    "cublas_workspace": "cuBLAS/cuBLASLt workspaces (approx. 8-32 MiB, more on Hopper)",
    "allocator_slack": "caching-allocator rounding and freed-but-reserved blocks (rule of thumb: 10% of what the "
                       "step allocates and frees: gradients, weight casts, activations, transients)",
}


@dataclass
class MemoryEstimate:
    """Bytes per term at the peak of a training step; ``peak_bytes`` is their sum (what the allocator holds)."""

    batch_size: int
    seq_len: int
    precision: str
    optimizer: str
    attention: str
    checkpointing: bool
    grad_accum_steps: int
    device: str
    num_parameters: int
    peak_phase: str
    terms: dict[str, int]
    activations_per_layer: dict[str, int]
    head_block: dict[str, int]
    transients: dict[str, int]
    phase_peaks: dict[str, int]
    overhead: dict[str, int] = field(default_factory=dict)
    # the attention kernel modelled ("naive", "flash", "efficient" or "math"; see the kernel properties)
    kernel_choice: KernelChoice = KernelChoice("flash", False)
    # MoE: the peak if every token were routed to the same experts (the estimate assumes balanced routing)
    worst_routing_peak_bytes: int | None = None
    # CUDA: the overheads measured on this machine's GPU, when they were (None: the documented constants)
    calibrated_with: Calibration | None = None
    world_size: int = 1  # GPUs training data-parallel; the terms are one GPU's
    strategy: str = "ddp"

    @property
    def kernel(self) -> str:
        return self.kernel_choice.name

    @property
    def kernel_description(self) -> str:
        return self.kernel_choice.describe()

    @property
    def calibration(self) -> str:
        """How the CUDA overhead was calibrated on this machine's GPU ("": not calibrated, the constants)."""
        return self.calibrated_with.describe() if self.calibrated_with else ""

    @property
    def peak_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` (or the CPU tracker) should report."""
        return sum(self.terms.values())

    @property
    def total_with_overhead(self) -> int:
        """Roughly what nvidia-smi shows for the process: the peak plus context, workspace and slack."""
        return self.peak_bytes + sum(self.overhead.values())

    def fits(self, card: str | GPUCard | float) -> bool:
        """Whether the step fits on ``card`` (a preset name, a GPUCard or GB), the overhead included."""
        return self.total_with_overhead <= get_gpu(card).memory_bytes

    def explain(self) -> list[tuple[str, int, str]]:
        """(term, bytes, one-line explanation) for every term, peak first then overhead."""
        rows = [(k, v, EXPLANATIONS[k]) for k, v in self.terms.items()]
        rows += [(k, v, OVERHEAD_EXPLANATIONS[k]) for k, v in self.overhead.items()]
        return rows

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["kernel_choice"], d["calibrated_with"]
        d.update(kernel=self.kernel, kernel_description=self.kernel_description, calibration=self.calibration)
        d["peak_bytes"] = self.peak_bytes
        d["total_with_overhead"] = self.total_with_overhead
        d["explanations"] = {**EXPLANATIONS, **{k: OVERHEAD_EXPLANATIONS[k] for k in self.overhead}}
        return d


# --- the estimate -------------------------------------------------------------------------------------------
def estimate(model_config: ModelConfig, batch_size: int, seq_len: int, *, precision: str = "bf16",
             optimizer: str = "adamw", attention: str | None = None, checkpointing: bool = False,
             grad_accum_steps: int = 1, device: str = "cpu", gpu: str | GPUCard | float | None = None,
             calibration: bool = True, world_size: int = 1, strategy: str = "ddp") -> MemoryEstimate:
    """:func:`estimate_step` with the step given as keywords (see :class:`StepSpec`). ``world_size`` GPUs
    with ``strategy`` ("ddp", "zero1", "fsdp"): the peak of one GPU, each running ``batch_size`` sequences."""
    spec = StepSpec(batch_size, seq_len, precision, optimizer, attention, checkpointing, grad_accum_steps, device,
                    world_size, strategy)
    return estimate_step(model_config, spec, gpu, calibration)


def estimate_step(model_config: ModelConfig, spec: StepSpec, gpu: str | GPUCard | float | None = None,
                  calibration: bool = True) -> MemoryEstimate:
    """The peak memory of the training step ``spec`` of ``model_config``: the largest of its moments.

    "adamw" is the course trainer's optimizer (``optim.make_optimizer``): the fused kernel where this torch
    has one for ``spec.device``, which makes no temporaries, else PyTorch's default. "adamw-fused",
    "adamw-foreach" (CUDA's default: sqrt(v) for every tensor at once) and "adamw-forloop" (CPU's default: one
    tensor at a time) model each kernel explicitly. ``spec.device="cuda"`` adds the framework overhead;
    ``gpu`` (a card preset, a GPUCard or GB) selects Hopper's larger cuBLAS workspace and, by its compute
    capability, the attention kernel (:mod:`minimind_edu.memory_kernels`). Where ``minimind-edu memory
    --calibrate`` has measured this machine's GPU (:mod:`minimind_edu.memory_calibration`), the CUDA overhead
    is the measured one, unless ``calibration=False``.
    """
    cfg = model_config
    if spec.seq_len > cfg.max_position_embeddings:
        raise ValueError(f"seq_len must be between 1 and max_position_embeddings={cfg.max_position_embeddings}, "
                         f"got {spec.seq_len}")
    card = get_gpu(gpu) if gpu is not None else None
    kernel = training_kernel(cfg, spec, card.capability if card is not None else None)
    sizes = StepSizes(cfg, spec, kernel)
    static, moments = sharded_step(sizes, static_terms(sizes), step_moments(sizes))
    static_bytes = sum(static.values())
    alive = [static_bytes + sum(moment.terms.values()) for moment in moments]  # bytes alive at each moment
    peak = moments[alive.index(max(alive))]  # the first of equal moments on a tie
    worst = None
    if cfg.num_experts:
        worst_sizes = worst_routing_sizes(sizes)
        worst = static_bytes + max(sum(m.terms.values())
                                   for m in sharded_step(worst_sizes, static, step_moments(worst_sizes))[1])
    phase_peaks: dict[str, int] = {}
    for moment, nbytes in zip(moments, alive):
        phase_peaks[moment.phase] = max(phase_peaks.get(moment.phase, 0), nbytes)
    overhead: dict[str, int] = {}
    cal = None
    if spec.device == "cuda":
        hopper = card is not None and card.hopper
        cal = load_calibration() if calibration else None
        context, fraction = (cal.context_bytes, cal.allocator_slack_fraction) if cal else (CUDA_CONTEXT_BYTES,
                                                                                          ALLOCATOR_SLACK_FRACTION)
        workspace = (cal.cublas_workspace_bytes if cal else
                     CUBLAS_WORKSPACE_HOPPER_BYTES if hopper else CUBLAS_WORKSPACE_BYTES)
        overhead = {"cuda_context": context, "cublas_workspace": workspace,
                    # the peak's bytes beyond the step-long terms, as the comment at the top explains
                    "allocator_slack": int(fraction * sum(peak.terms.values()))}
    return MemoryEstimate(
        batch_size=spec.batch_size, seq_len=spec.seq_len, precision=spec.precision, optimizer=spec.optimizer,
        attention=spec.attention or cfg.attention, checkpointing=spec.checkpointing,
        grad_accum_steps=spec.grad_accum_steps, device=spec.device, num_parameters=sizes.parameters,
        peak_phase=peak.phase, terms={**static, **peak.terms}, activations_per_layer=saved_per_layer(sizes),
        head_block={**head_block(sizes), "lm_head_weight_copy": sizes.lm_head_cast}, transients=peak.transients,
        phase_peaks=phase_peaks, overhead=overhead, kernel_choice=kernel, worst_routing_peak_bytes=worst,
        calibrated_with=cal, world_size=spec.world_size, strategy=spec.strategy,
    )


def fits(model_config: ModelConfig, batch_size: int, seq_len: int, gpu: str | GPUCard | float, **kwargs) -> bool:
    """Whether a training step fits on ``gpu`` (a preset name, a GPUCard or GB), overhead included.
    ``kwargs``: the other keywords of :func:`estimate` but ``device``, which is "cuda"."""
    card = get_gpu(gpu)
    return estimate(model_config, batch_size, seq_len, device="cuda", gpu=card, **kwargs).fits(card)


def largest_batch(model_config: ModelConfig, seq_len: int, gpu: str | GPUCard | float, *,
                  max_batch: int = 1 << 20, **kwargs) -> int:
    """The largest batch size whose training step fits on ``gpu``; 0 if not even batch 1 fits.
    ``kwargs`` as for :func:`fits`."""
    return largest_batch_for(model_config, StepSpec(1, seq_len, device="cuda", **kwargs), gpu, max_batch=max_batch)


def largest_batch_for(model_config: ModelConfig, spec: StepSpec, gpu: str | GPUCard | float, *,
                      max_batch: int = 1 << 20) -> int:
    """The largest batch size at which ``spec`` (its batch size and device aside: CUDA) fits on ``gpu``.

    Memory grows with the batch size, so a doubling search followed by bisection needs ~2 log2(B) estimates.
    """
    card = get_gpu(gpu)

    def fits_at(batch_size: int) -> bool:
        return estimate_step(model_config, replace(spec, batch_size=batch_size, device="cuda"), card).fits(card)

    if not fits_at(1):
        return 0
    lo, hi = 1, 2
    while hi <= max_batch and fits_at(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_batch + 1)
    while hi - lo > 1:  # lo fits, hi does not (or is past max_batch)
        mid = (lo + hi) // 2
        if fits_at(mid):
            lo = mid
        else:
            hi = mid
    return lo


def format_table(est: MemoryEstimate, measured_bytes: int | None = None, width: int = 100) -> str:
    """The breakdown as a text table (MiB), optionally with a measured peak and the relative error.

    Lines are at most ``width`` characters: the explanations wrap under their column, because a notebook's output
    area (JupyterLab on a laptop: about 110 characters) would otherwise break them in the middle of words."""
    indent = " " * 34

    def row(term: str, nbytes: float, what: str) -> str:
        return textwrap.fill(f"{term:<22}{nbytes / MiB:>10.1f}  {what}", width=width, subsequent_indent=indent)

    lines = [f"{'term':<22}{'MiB':>10}  what it is", "-" * width]
    for name, nbytes, why in est.explain():
        if name in est.overhead and name == next(iter(est.overhead)):
            lines.append(row("peak allocated", est.peak_bytes, f"at the {est.peak_phase} phase"))
        lines.append(row(name, nbytes, why))
    if not est.overhead:
        lines.append(row("peak allocated", est.peak_bytes, f"at the {est.peak_phase} phase"))
    else:
        lines.append(row("total (nvidia-smi)", est.total_with_overhead, "peak + overhead (approximate)"))
    if measured_bytes is not None:
        err = (est.peak_bytes - measured_bytes) / measured_bytes
        lines.append(row("measured peak", measured_bytes, f"estimate is {err:+.2%} off"))
    return "\n".join(lines)
