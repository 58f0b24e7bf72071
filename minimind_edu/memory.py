"""How much memory does training MiniMind take? A term-by-term estimate, derived from what PyTorch keeps alive.

:func:`estimate` walks one training step of :class:`minimind_edu.model.MiniMind` (forward, backward, optimizer
step) and adds up, in bytes, every tensor that is alive at each moment that can be the peak. Every size below
comes from reading ``model.py`` with ``torch.autograd.graph.saved_tensors_hooks`` and checking it against
:func:`measure`, which counts the live tensor storages of a real step (``tests/test_memory.py`` holds the two
within 3% on a grid of sizes). Why the textbook ``34·s·b·h`` per layer is not enough here:

* the residual stream stays fp32 under autocast (the embedding output is fp32 and ``fp32 + bf16 = fp32``);
* RMSNorm works in fp32 and saves its fp32 input, ``rsqrt`` and normalised tensor for backward;
* autocast casts an fp32 input to bf16 once *per consumer*: q, k and v each save their own bf16 copy of the
  normed input, gate and up their own copy too; the bf16 copies of the weights live until backward;
* SwiGLU saves four ``intermediate_size`` tensors (gate, silu(gate), up, and their product);
* the LM head over a 6400-word vocabulary makes an fp32 ``log_softmax`` that cross-entropy saves, and backward
  holds two more vocabulary-sized fp32 tensors at once: this block is often the step's peak.

What is *not* measured on CPU, and so only approximated for GPUs: the CUDA context, the cuBLAS workspace and
the caching allocator's slack (reserved but unused). They are reported apart in ``overhead`` so both the
allocator's view (``torch.cuda.max_memory_allocated``) and the driver's (nvidia-smi) can be read.
"""
from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field

from .memory_measure import OPTIMIZERS, Measurement, StorageTracker, measure  # noqa: F401 (part of this module's API)
from .device import PRECISIONS
from .model import ModelConfig, count_parameters, sdpa_reads_kv_unrepeated
from .optim import adamw_implementation

GiB = 2**30
MiB = 2**20
DEVICES = ("cpu", "cuda")

# --- GPU cards ----------------------------------------------------------------------------------------------
# Capacities as nvidia-smi reports them (MiB). Approximate framework overhead on a CUDA device, NOT measured
# here (this course's reference machine has no GPU); where they come from:
#   * CUDA context: the driver's per-process state plus PyTorch's kernels. With lazy module loading (default
#     since CUDA 11.7) it is typically 300-600 MiB; we take 500 MiB. Measure yours: nvidia-smi after
#     `torch.zeros(1, device="cuda")`, or run benchmarks/memory_grid_gpu.py which records it.
#   * cuBLAS workspace: PyTorch's default CUBLAS_WORKSPACE_CONFIG gives each handle ":4096:2:16:8" = 8.125 MiB,
#     32 MiB on Hopper (H100); cuBLASLt adds its own workspace (1-32 MiB). It comes from the caching allocator.
#   * allocator slack: the caching allocator rounds blocks (512 B, 2 MiB and 20 MiB segments) and keeps freed
#     blocks reserved; max_memory_reserved is commonly 5-15% above max_memory_allocated. We take 10% of the
#     step's non-persistent bytes (activations and transients), a rule of thumb.
CUDA_CONTEXT_BYTES = 500 * MiB
ALLOCATOR_SLACK_FRACTION = 0.10


@dataclass(frozen=True)
class GPUCard:
    name: str
    memory_mib: int
    hopper: bool = False

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    @property
    def memory_gb(self) -> float:
        return self.memory_mib / 1024


GPU_PRESETS: dict[str, GPUCard] = {
    "rtx-4060": GPUCard("RTX 4060 8GB", 8188),
    "rtx-3060": GPUCard("RTX 3060 12GB", 12288),
    "rtx-4070": GPUCard("RTX 4070 12GB", 12282),
    "rtx-4080": GPUCard("RTX 4080 16GB", 16376),
    "rtx-3090": GPUCard("RTX 3090 24GB", 24576),
    "rtx-4090": GPUCard("RTX 4090 24GB", 24564),
    "rtx-4090d": GPUCard("RTX 4090D 24GB", 24564),
    "a100-40gb": GPUCard("A100 40GB", 40960),
    "a100-80gb": GPUCard("A100 80GB", 81920),
    "h100-80gb": GPUCard("H100 80GB", 81559, hopper=True),
}


def get_gpu(card: str | GPUCard | float) -> GPUCard:
    """A card by preset name, a :class:`GPUCard`, or a capacity in GB (``24`` -> a generic 24 GB card)."""
    if isinstance(card, GPUCard):
        return card
    if isinstance(card, (int, float)):
        if card <= 0:
            raise ValueError(f"GPU memory must be positive, got {card} GB")
        return GPUCard(f"{card:g} GB GPU", int(card * 1024))
    if card not in GPU_PRESETS:
        raise ValueError(f"unknown GPU {card!r}; choose one of: {', '.join(GPU_PRESETS)} (or give a size in GB)")
    return GPU_PRESETS[card]


# --- the breakdown ------------------------------------------------------------------------------------------
EXPLANATIONS = {
    "weights": "fp32 master weights (the tied embedding / LM head counted once)",
    "buffers": "RoPE cos and sin tables, fp32, max_position_embeddings x head_dim each",
    "batch": "input ids and targets, int64",
    "gradients": "fp32 gradients, one per weight (alive at the peak only after backward made them, or when accumulating)",
    "optimizer_state": "AdamW keeps m and v (2 fp32 copies of the weights) and a step counter per tensor; SGD momentum 1 copy",
    "low_precision_weights": "bf16/fp16 copies of the weight matrices made by autocast, saved for backward until used",
    "activations": "tensors the blocks saved for backward (per layer: norms, q/k/v, attention, SwiGLU, residual)",
    "head": "final norm, LM head input, fp32 log_softmax of the logits saved by cross-entropy",
    "transient": "buffers alive only at the peak moment (logits gradients, optimizer temporaries, ...)",
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

    @property
    def peak_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` (or the CPU tracker) should report."""
        return sum(self.terms.values())

    @property
    def total_with_overhead(self) -> int:
        """Roughly what nvidia-smi shows for the process: the peak plus context, workspace and slack."""
        return self.peak_bytes + sum(self.overhead.values())

    def explain(self) -> list[tuple[str, int, str]]:
        """(term, bytes, one-line explanation) for every term, peak first then overhead."""
        rows = [(k, v, EXPLANATIONS[k]) for k, v in self.terms.items()]
        rows += [(k, v, OVERHEAD_EXPLANATIONS[k]) for k, v in self.overhead.items()]
        return rows

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_bytes"] = self.peak_bytes
        d["total_with_overhead"] = self.total_with_overhead
        d["explanations"] = {**EXPLANATIONS, **{k: OVERHEAD_EXPLANATIONS[k] for k in self.overhead}}
        return d


OVERHEAD_EXPLANATIONS = {
    "cuda_context": "CUDA context and loaded kernels (approx. 500 MiB; not measured here, varies with driver/GPU)",
    "cublas_workspace": "cuBLAS/cuBLASLt workspaces (approx. 8-32 MiB, more on Hopper)",
    "allocator_slack": "caching-allocator rounding and freed-but-reserved blocks (rule of thumb: 10% of activations)",
}


# --- the estimate -------------------------------------------------------------------------------------------
def _check(cfg: ModelConfig, batch_size: int, seq_len: int, precision: str, optimizer: str,
           attention: str, grad_accum_steps: int, device: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 1 <= seq_len <= cfg.max_position_embeddings:
        raise ValueError(f"seq_len must be between 1 and max_position_embeddings={cfg.max_position_embeddings}, got {seq_len}")
    for name, value, allowed in (("precision", precision, PRECISIONS), ("optimizer", optimizer, OPTIMIZERS),
                                 ("attention", attention, ("sdpa", "naive")), ("device", device, DEVICES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be at least 1, got {grad_accum_steps}")
    if cfg.num_experts or cfg.qk_norm or cfg.dropout:
        raise ValueError(
            "estimate() models the dense MiniMind2 family (no MoE, no qk_norm, dropout 0); "
            f"got num_experts={cfg.num_experts}, qk_norm={cfg.qk_norm}, dropout={cfg.dropout}: use measure() instead"
        )


def layer_activations(cfg: ModelConfig, batch_size: int, seq_len: int, precision: str = "bf16",
                      attention: str | None = None) -> dict[str, int]:
    """Bytes one block saves for backward (no checkpointing), by part. Names match model.py."""
    attention = attention or cfg.attention
    b, t = batch_size, seq_len
    n, h, nh, inter = b * t, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size
    hq = nh * cfg.head_dim  # width of q (and of k, v once repeated to every query head)
    amp = precision != "fp32"
    c = 2 if amp else 4  # bytes of the compute dtype
    # Both RMSNorms save rsqrt (1 fp32 per token) and the normalised fp32 tensor; in fp32 the linears that
    # follow save the norm's output too, under autocast they save their own low-precision casts instead.
    norms = 2 * (n * 4 + n * h * 4) + (0 if amp else 2 * n * h * 4)
    # q after RoPE, and k, v: repeated to every head (repeat_kv copies) for naive attention, kept at
    # num_kv_heads when sdpa reads them with enable_gqa. Under autocast q, k and v each also save their own
    # cast of the normed input.
    kv_width = hq if attention == "naive" or not sdpa_reads_kv_unrepeated(cfg) else cfg.num_kv_heads * cfg.head_dim
    qkv = n * hq * c + 2 * n * kv_width * c + (3 * n * h * c if amp else 0)
    if attention == "sdpa":  # the fused kernel saves its output and one log-sum-exp per head and query
        attn = n * hq * c + n * nh * 4
    else:  # causal mask, fp32 softmax probabilities (and their cast), and the re-laid-out output y
        attn = t * t + b * nh * t * t * 4 + (b * nh * t * t * c if amp else 0) + n * hq * c
    # gate, silu(gate), up, silu(gate) * up; under autocast gate and up each save a cast of their input.
    swiglu = 4 * n * inter * c + (2 * n * h * c if amp else 0)
    residual = 2 * n * h * 4  # the fp32 residual stream entering each norm
    return {"norms": norms, "qkv": qkv, "attention": attn, "swiglu": swiglu, "residual": residual}


def _layer_matrix_params(cfg: ModelConfig) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    return 2 * h * cfg.num_heads * d + 2 * h * cfg.num_kv_heads * d + 3 * h * cfg.intermediate_size


def _num_param_tensors(cfg: ModelConfig) -> int:
    return 1 + 9 * cfg.num_layers + 1 + (0 if cfg.tie_word_embeddings else 1)


def estimate(
    model_config: ModelConfig,
    batch_size: int,
    seq_len: int,
    *,
    precision: str = "bf16",
    optimizer: str = "adamw",
    attention: str | None = None,
    checkpointing: bool = False,
    grad_accum_steps: int = 1,
    device: str = "cpu",
    gpu: str | GPUCard | float | None = None,
) -> MemoryEstimate:
    """The peak memory of one training step of ``model_config`` at ``batch_size`` x ``seq_len`` tokens.

    ``precision``: "fp32", or "bf16"/"fp16" autocast with fp32 master weights (fp16 adds a grad scaler,
    whose few scalars are negligible). ``optimizer``: "adamw", "sgd" (momentum 0.9) or "none" (forward and
    backward only). ``attention`` defaults to the config's. ``checkpointing`` recomputes each block in
    backward. ``grad_accum_steps > 1`` keeps the gradients alive through every micro-step.
    "adamw" is the course trainer's optimizer (``train.make_optimizer``): the fused kernel, on CPU and CUDA
    alike, which makes no temporaries (measured on CPU; the CUDA figure is unvalidated until
    benchmarks/memory_grid_gpu.py runs on a GPU: this course's machine has none), or
    PyTorch's default where this torch has no fused kernel. "adamw-fused", "adamw-foreach" (CUDA's default:
    sqrt(v) for every tensor at once) and "adamw-forloop" (CPU's default: one tensor at a time) model each
    kernel explicitly. ``device="cuda"`` adds the framework overhead;
    ``gpu`` (a card preset, a GPUCard or GB) selects Hopper's larger cuBLAS workspace.
    """
    cfg = model_config
    attention = attention or cfg.attention
    _check(cfg, batch_size, seq_len, precision, optimizer, attention, grad_accum_steps, device)
    b, t = batch_size, seq_len
    n, h, v, L = b * t, cfg.hidden_size, cfg.vocab_size, cfg.num_layers
    hkv = cfg.num_kv_heads * cfg.head_dim
    amp = precision != "fp32"
    c = 2 if amp else 4
    counts = count_parameters(cfg)
    p = counts["total"]

    # Alive through the whole step.
    weights = p * 4
    buffers = 2 * cfg.max_position_embeddings * cfg.head_dim * 4
    batch = 2 * n * 8
    adamw_state = 2 * p * 4 + 4 * _num_param_tensors(cfg)  # m, v and an fp32 step tensor, every kernel alike
    opt_state = adamw_state if optimizer.startswith("adamw") else {"sgd": p * 4, "none": 0}[optimizer]
    static = {"weights": weights, "buffers": buffers, "batch": batch, "optimizer_state": opt_state}
    grads_kept = p * 4 if grad_accum_steps > 1 else 0

    # Saved for backward by the blocks.
    per_layer = layer_activations(cfg, b, t, precision, attention)
    layer_total = sum(per_layer.values())
    lp_layer = _layer_matrix_params(cfg) * c if amp else 0
    if checkpointing:  # each block keeps only its input; its insides are recomputed in backward
        acts = L * n * h * 4
        lp_weights = 0
    else:
        acts = L * layer_total
        lp_weights = L * lp_layer
    head = {
        "final_norm": n * 4 + 2 * n * h * 4,  # its fp32 input, rsqrt and normalised tensor
        "lm_head_input": n * h * c,  # fp32: the norm's output; autocast: its cast
        "log_softmax": n * v * 4,  # cross-entropy's saved fp32 log-probabilities
        "loss": 8,  # the loss and nll_loss's total weight, fp32 scalars
    }
    lm_head_copy = v * h * c if amp else 0

    # Forward's end, inside cross-entropy: logits, their fp32 copy (autocast only) and log_softmax; every
    # block's (k, v) is still referenced by the model's list of presents until forward returns.
    # (sdpa saves k and v themselves when it reads them unrepeated, so they cost nothing extra then.)
    repeats = cfg.num_heads > cfg.num_kv_heads and (attention == "naive" or not sdpa_reads_kv_unrepeated(cfg))
    presents = L * 2 * n * hkv * c if repeats else 0
    fwd_transient = {"logits": n * v * c, "logits_fp32_copy": n * v * 4 if amp else 0, "kv_presents": presents}
    candidates = []

    def add(phase, grads, low_prec, activations, head_bytes, transients):
        terms = {**static, "gradients": grads, "low_precision_weights": low_prec,
                 "activations": activations, "head": head_bytes, "transient": sum(transients.values())}
        candidates.append((sum(terms.values()), phase, terms, transients))

    # With checkpointing, autocast's cache still holds every block's weight casts until forward ends, and
    # the presents list holds k and v that no saved tensor keeps alive any more.
    fwd_lp = L * lp_layer if checkpointing else lp_weights
    if checkpointing and not repeats:
        fwd_transient["kv_presents"] = L * 2 * n * hkv * c
    add("forward", grads_kept, fwd_lp + lm_head_copy, acts, sum(head.values()), fwd_transient)
    # Backward's start: nll_loss's gradient and log_softmax's gradient (the logits' gradient), both fp32
    # and vocabulary-sized, while log_softmax's output is still saved.
    add("backward", grads_kept, lp_weights + lm_head_copy, acts, sum(head.values()),
        {"nll_loss_grad": n * v * 4, "logits_grad": n * v * 4})
    # Inside the last block's backward (it wins with naive attention at long sequences, or very wide SwiGLU):
    # the earlier blocks' activations are all alive, this block's are partly freed, and its gradients flow.
    hq = cfg.num_heads * cfg.head_dim
    inter = cfg.intermediate_size
    s_scores = b * cfg.num_heads * t * t  # elements of one T x T score matrix per head
    head_grads = (v * h + h) * 4  # LM head (tied embedding) and final norm, done first
    last_grads = head_grads + (h + 3 * h * inter + h * hq) * 4  # + norm2, SwiGLU and o_proj gradients
    # What the block still holds when backward reaches its attention: norm1's tensors, its input, the
    # q/k/v tensors (v's gradient takes v's place) and the weight casts of q, k, v.
    attn_rem = (n * 4 + n * h * 4 + (0 if amp else n * h * 4)) + 3 * n * hq * c + (3 * n * h * c if amp else 0)
    qkv_copies = (h * hq + 2 * h * hkv) * c if amp else 0
    if checkpointing:
        earlier, earlier_lp, inputs = 0, 0, L * n * h * 4
    else:
        earlier, earlier_lp, inputs = (L - 1) * layer_total, (L - 1) * lp_layer, n * h * 4
    if attention == "naive":
        # Forward, at the last block's softmax: its scores (masked, and an fp32 copy under autocast) and the
        # softmax output; every block's (k, v) is held by the presents list; autocast's norm output is an argument.
        fwd = {"scores": s_scores * c, "scores_fp32": s_scores * 4 if amp else 0, "probs": s_scores * 4,
               "kv_presents": presents, "norm_output": n * h * 4 if amp else 0}
        add("forward", grads_kept, earlier_lp + qkv_copies, earlier + inputs + attn_rem + t * t, 0, fwd)
        # Backward at a block's softmax: the last block (all earlier activations alive) and the first block
        # (every later gradient made); with checkpointing the first is often larger.
        first_grads = (p - counts["per_block"]) * 4  # all but the first block's
        first_at_attn = first_grads + (last_grads - head_grads)  # + its own norm2, SwiGLU and o_proj
        for first, grads, before, before_lp, ins in (
            (False, max(grads_kept, last_grads), earlier, earlier_lp, inputs),
            (True, max(grads_kept, first_at_attn), 0, 0, n * h * 4),
        ):
            # softmax backward: saved fp32 probabilities, their gradient, and softmax's input gradient
            work = {"probs_grad": s_scores * 4, "softmax_grad": s_scores * 4, "residual_grad": n * h * 4}
            add("backward", grads, before_lp + qkv_copies, before + ins + attn_rem + t * t + s_scores * 4, 0, work)
            if checkpointing:  # the recomputed forward at softmax: masked scores, their fp32 copy, softmax output
                fwd = {"scores": s_scores * c, "scores_fp32": s_scores * 4 if amp else 0, "probs": s_scores * 4}
                add("backward", max(grads_kept, first_grads if first else head_grads),
                    qkv_copies, ins + attn_rem + t * t, 0, {**fwd, "residual_grad": n * h * 4})
    # SwiGLU's backward: gradients of its product, silu and gate, all intermediate-sized (approximate).
    mlp_full = layer_total if not checkpointing else layer_total - n * h * 4
    add("backward", max(grads_kept, head_grads), earlier_lp + lp_layer, earlier + inputs + mlp_full, 0,
        {"swiglu_grads": 3 * n * inter * c, "residual_grad": n * h * 4})
    # The first block's backward (the last one run): every later gradient exists, and the block's own
    # activations are alive (with checkpointing: recomputed), with SwiGLU's gradients in flight.
    add("backward", max(grads_kept, (p - counts["per_block"]) * 4), lp_layer, layer_total, 0,
        {"swiglu_grads": 3 * n * inter * c, "residual_grad": n * h * 4})
    # Backward's end: every gradient exists; the embedding's dense gradient is made, then added out of place
    # into the tied LM-head gradient (AccumulateGrad's ``grad + new``), so two more vocab x hidden tensors.
    # (Untied, the embedding's gradient simply becomes its .grad, already counted in the gradients.)
    emb_tmp = {"embedding_grad": v * h * 4, "tied_grad_sum": v * h * 4} if cfg.tie_word_embeddings else {}
    add("backward", p * 4, 0, 0, 0, emb_tmp)
    if optimizer.startswith("adamw"):
        kernel = adamw_implementation(device) if optimizer == "adamw" else optimizer.removeprefix("adamw-")
        if kernel == "fused":  # one kernel updates m, v and the weight element by element: no temporaries
            opt_tmp = {}
        elif kernel == "foreach":  # sqrt(v) for every tensor of a parameter group at once: the matrices'
            opt_tmp = {"adamw_sqrt_v": (p - (2 * L + 1) * h) * 4}  # group, i.e. all but the norm gains
        else:  # per-tensor loop: sqrt(v) and sqrt(v)/bias_correction of the largest tensor
            largest = max(v * h, h * cfg.intermediate_size, h * cfg.num_heads * cfg.head_dim)
            opt_tmp = {"adamw_sqrt_v": 2 * largest * 4}
        add("optimizer", p * 4, 0, 0, 0, opt_tmp)
    elif optimizer == "sgd":
        add("optimizer", p * 4, 0, 0, 0, {})

    peak_bytes, phase, terms, transients = max(candidates, key=lambda x: x[0])
    phase_peaks: dict[str, int] = {}
    for total, ph, _, _ in candidates:
        phase_peaks[ph] = max(phase_peaks.get(ph, 0), total)

    overhead: dict[str, int] = {}
    if device == "cuda":
        hopper = gpu is not None and get_gpu(gpu).hopper
        dynamic = peak_bytes - sum(static.values())
        overhead = {
            "cuda_context": CUDA_CONTEXT_BYTES,
            "cublas_workspace": (32 + 32) * MiB if hopper else (8 + 1) * MiB,
            "allocator_slack": int(ALLOCATOR_SLACK_FRACTION * dynamic),
        }
    layer_parts = {k: (n * h * 4 if k == "residual" else 0) if checkpointing else val for k, val in per_layer.items()}
    return MemoryEstimate(
        batch_size=b, seq_len=t, precision=precision, optimizer=optimizer, attention=attention,
        checkpointing=checkpointing, grad_accum_steps=grad_accum_steps, device=device, num_parameters=p,
        peak_phase=phase, terms=terms, activations_per_layer={**layer_parts, "low_precision_weights": 0 if checkpointing else lp_layer},
        head_block={**head, "lm_head_weight_copy": lm_head_copy}, transients=transients,
        phase_peaks=phase_peaks, overhead=overhead,
    )


def fits(model_config: ModelConfig, batch_size: int, seq_len: int, gpu: str | GPUCard | float, **kwargs) -> bool:
    """Whether a training step fits on ``gpu`` (a preset name, a GPUCard or GB), overhead included."""
    card = get_gpu(gpu)
    est = estimate(model_config, batch_size, seq_len, device="cuda", gpu=card, **kwargs)
    return est.total_with_overhead <= card.memory_bytes


def largest_batch(model_config: ModelConfig, seq_len: int, gpu: str | GPUCard | float, *,
                  max_batch: int = 1 << 20, **kwargs) -> int:
    """The largest batch size whose training step fits on ``gpu``; 0 if not even batch 1 fits.

    Memory grows with the batch size, so a doubling search followed by bisection needs ~2 log2(B) estimates.
    """
    if not fits(model_config, 1, seq_len, gpu, **kwargs):
        return 0
    lo, hi = 1, 2
    while hi <= max_batch and fits(model_config, hi, seq_len, gpu, **kwargs):
        lo, hi = hi, hi * 2
    hi = min(hi, max_batch + 1)
    while hi - lo > 1:  # lo fits, hi does not (or is past max_batch)
        mid = (lo + hi) // 2
        if fits(model_config, mid, seq_len, gpu, **kwargs):
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
