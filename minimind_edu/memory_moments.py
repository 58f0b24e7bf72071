"""What one training step of MiniMind holds in memory, moment by moment: the model behind ``memory.estimate``.

A step's peak is not the sum of everything it ever allocates: activations are saved in forward and freed in
backward while gradients appear, cross-entropy's vocabulary-wide tensors come and go, the optimizer makes its
temporaries at the very end. So the step is described as the *moments* that can hold its peak (forward's end,
backward's start, inside a block's backward, backward's end, the optimizer step), each a :class:`Moment` that
lists the bytes alive then. Every size comes from reading ``model.py`` with
``torch.autograd.graph.saved_tensors_hooks`` and is checked against ``memory_measure.measure``, which counts the live
tensor storages of a real step (``tests/test_memory.py`` holds the estimate within 3% on a grid of sizes).
Why the textbook ``34·s·b·h`` per layer is not enough here:

* the residual stream stays fp32 under autocast (the embedding output is fp32 and ``fp32 + bf16 = fp32``);
* RMSNorm works in fp32 and saves its fp32 input, ``rsqrt`` and normalised tensor for backward;
* autocast casts an fp32 input to bf16 once *per consumer*: q, k and v each save their own bf16 copy of the
  normed input, gate and up their own copy too; the bf16 copies of the weights live until backward;
* SwiGLU saves four ``intermediate_size`` tensors (gate, silu(gate), up, and their product);
* the LM head over a 6400-word vocabulary makes an fp32 ``log_softmax`` that cross-entropy saves, and backward
  holds two more vocabulary-sized fp32 tensors at once: this block is often the step's peak.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory_measure import StepSpec
from .model import ModelConfig, count_parameters, sdpa_reads_kv_unrepeated
from .optim import adamw_implementation

FP32, INT64 = 4, 8  # bytes per element


# --- the sizes of a step ------------------------------------------------------------------------------------
def layer_matrix_params(cfg: ModelConfig) -> int:
    """Weights in one block's matrices (q, k, v, o and SwiGLU's three): what autocast casts for each block."""
    hidden, head_dim = cfg.hidden_size, cfg.head_dim
    return 2 * hidden * (cfg.num_heads + cfg.num_kv_heads) * head_dim + 3 * hidden * cfg.intermediate_size


class StepSizes:
    """Every size the moments of a step need, derived once from the model config and the step. Counts and
    widths are in elements; tensors (``fp32_*``, ``*_casts``, ``*_saved``, ``*_gradients``...) in bytes."""

    def __init__(self, cfg: ModelConfig, spec: StepSpec):
        counts = count_parameters(cfg)
        attention = spec.attention or cfg.attention
        self.spec = spec
        self.batch, self.seq_len, self.tokens = spec.batch_size, spec.seq_len, spec.batch_size * spec.seq_len
        self.hidden, self.vocab, self.layers = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
        self.heads, self.intermediate = cfg.num_heads, cfg.intermediate_size
        self.q_width = cfg.num_heads * cfg.head_dim  # q's width, and k's and v's once repeated to every query head
        self.kv_width = cfg.num_kv_heads * cfg.head_dim  # k's and v's width as projected
        self.parameters, self.block_parameters = counts["total"], counts["per_block"]
        self.rope_tables = 2 * cfg.max_position_embeddings * cfg.head_dim * FP32  # cos and sin
        # the embedding, 9 per block (7 matrices, 2 norms), the final norm, an untied LM head
        self.weight_tensors = 1 + 9 * cfg.num_layers + 1 + (0 if cfg.tie_word_embeddings else 1)
        self.naive, self.checkpointing, self.tied = attention == "naive", spec.checkpointing, cfg.tie_word_embeddings
        # bf16/fp16 autocast: matmuls in the low precision; weights, gradients and the residual stream stay fp32
        self.autocast = spec.precision != "fp32"
        self.compute_bytes = 2 if self.autocast else FP32  # bytes per element of the compute dtype
        # repeat_kv copies k and v to every query head (when there are fewer KV heads): naive attention does,
        # sdpa does where it cannot read them unrepeated
        self.kv_repeated = cfg.num_heads > cfg.num_kv_heads and (self.naive or not sdpa_reads_kv_unrepeated(cfg))
        self.fp32_hidden = self.tokens * self.hidden * FP32  # one fp32 tensor as wide as the residual stream
        self.fp32_vocab = self.tokens * self.vocab * FP32  # one fp32 tensor as wide as the logits
        self.score_elements = self.batch * self.heads * self.seq_len ** 2  # naive attention: T x T per head
        # autocast's low-precision copies of one block's weight matrices, and of the (tied) LM head's
        self.block_casts = layer_matrix_params(cfg) * self.compute_bytes if self.autocast else 0
        self.lm_head_cast = self.vocab * self.hidden * self.compute_bytes if self.autocast else 0
        self.kv_presents = self.layers * 2 * self.tokens * self.kv_width * self.compute_bytes  # every block's (k, v)
        self.all_gradients = self.parameters * FP32
        self.kept_gradients = self.all_gradients if spec.grad_accum_steps > 1 else 0  # alive through micro-steps
        self.head_gradients = (self.vocab * self.hidden + self.hidden) * FP32  # LM head and final norm: made first
        self.later_gradients = (self.parameters - self.block_parameters) * FP32  # all but the first block's
        self.block_parts = _saved_by_one_block(self)
        self.block_saved = sum(self.block_parts.values())
        # With checkpointing a block keeps only its fp32 input and recomputes its insides in backward.
        self.all_blocks_saved = self.layers * (self.fp32_hidden if self.checkpointing else self.block_saved)
        # Inside the last block's backward: the blocks before it, and the block inputs still alive (the last
        # block's own, or with checkpointing every block's, the earlier blocks having saved nothing else).
        self.earlier_saved = 0 if self.checkpointing else (self.layers - 1) * self.block_saved
        self.earlier_casts = 0 if self.checkpointing else (self.layers - 1) * self.block_casts
        self.block_inputs = self.layers * self.fp32_hidden if self.checkpointing else self.fp32_hidden


def _saved_by_one_block(s: StepSizes) -> dict[str, int]:
    """Bytes one block saves for backward (without checkpointing), by part. Names match model.py."""
    tokens, compute_bytes, autocast = s.tokens, s.compute_bytes, s.autocast
    input_cast = tokens * s.hidden * compute_bytes  # a low-precision cast of a normed input, made per consumer
    # Both RMSNorms save rsqrt (1 fp32 per token) and the normalised fp32 tensor; in fp32 the linears that
    # follow save the norm's output too, under autocast they save their own low-precision casts instead.
    norms = 2 * (tokens * FP32 + s.fp32_hidden) + (0 if autocast else 2 * s.fp32_hidden)
    # q after RoPE, and k, v: repeated to every head (repeat_kv copies) for naive attention, kept at
    # num_kv_heads when sdpa reads them with enable_gqa. Under autocast q, k and v each also save their own
    # cast of the normed input.
    kv_width = s.q_width if s.kv_repeated else s.kv_width
    qkv = tokens * (s.q_width + 2 * kv_width) * compute_bytes + (3 * input_cast if autocast else 0)
    output = tokens * s.q_width * compute_bytes  # attention's output, heads side by side
    if s.naive:  # causal mask (bool), fp32 softmax probabilities (and their cast), the re-laid-out output
        probabilities = s.score_elements * FP32 + (s.score_elements * compute_bytes if autocast else 0)
        attention = s.seq_len ** 2 + probabilities + output
    else:  # the fused kernel saves its output and one fp32 log-sum-exp per head and query
        attention = output + tokens * s.heads * FP32
    # gate, silu(gate), up, silu(gate) * up; under autocast gate and up each save a cast of their input.
    swiglu = 4 * tokens * s.intermediate * compute_bytes + (2 * input_cast if autocast else 0)
    residual = 2 * s.fp32_hidden  # the fp32 residual stream entering each norm
    return {"norms": norms, "qkv": qkv, "attention": attention, "swiglu": swiglu, "residual": residual}


def layer_activations(cfg: ModelConfig, batch_size: int, seq_len: int, precision: str = "bf16",
                      attention: str | None = None) -> dict[str, int]:
    """Bytes one block saves for backward (no checkpointing), by part. Names match model.py."""
    return StepSizes(cfg, StepSpec(batch_size, seq_len, precision, attention=attention)).block_parts


def saved_per_layer(s: StepSizes) -> dict[str, int]:
    """What each block keeps from forward to its backward, by part, with its low-precision weight copies."""
    if s.checkpointing:  # only its input, the residual stream entering it
        return {**{part: 0 for part in s.block_parts}, "residual": s.fp32_hidden, "low_precision_weights": 0}
    return {**s.block_parts, "low_precision_weights": s.block_casts}


def static_terms(s: StepSizes) -> dict[str, int]:
    """What is alive through the whole step: weights, RoPE tables, the batch and the optimizer's state."""
    if s.spec.optimizer.startswith("adamw"):  # m, v and an fp32 step tensor per weight tensor, every kernel alike
        optimizer_state = 2 * s.parameters * FP32 + FP32 * s.weight_tensors
    else:  # SGD's momentum, or no optimizer
        optimizer_state = s.parameters * FP32 if s.spec.optimizer == "sgd" else 0
    return {"weights": s.parameters * FP32, "buffers": s.rope_tables, "batch": 2 * s.tokens * INT64,
            "optimizer_state": optimizer_state}


# --- the moments of a step ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moment:
    """An instant of a training step that can hold its peak: what is alive then besides the step-long terms
    (weights, buffers, batch, optimizer state), in bytes."""

    phase: str  # "forward", "backward" or "optimizer"
    name: str
    gradients: int
    low_precision_weights: int
    activations: int
    head: int
    transients: dict[str, int]

    @property
    def terms(self) -> dict[str, int]:
        return {"gradients": self.gradients, "low_precision_weights": self.low_precision_weights,
                "activations": self.activations, "head": self.head, "transient": sum(self.transients.values())}


def head_block(s: StepSizes) -> dict[str, int]:
    """What the final norm, the LM head and cross-entropy save for backward."""
    return {
        "final_norm": s.tokens * FP32 + 2 * s.fp32_hidden,  # its fp32 input, rsqrt and normalised tensor
        "lm_head_input": s.tokens * s.hidden * s.compute_bytes,  # fp32: the norm's output; autocast: its cast
        "log_softmax": s.fp32_vocab,  # cross-entropy's saved fp32 log-probabilities
        "loss": 2 * FP32,  # the loss and nll_loss's total weight, fp32 scalars
    }


def _forward_end(s: StepSizes) -> Moment:
    # Inside cross-entropy: the logits, their fp32 copy (autocast only) and log_softmax. Autocast's cache still
    # holds every block's weight casts (with checkpointing too), and the model's list of presents every block's
    # (k, v) until forward returns: extra bytes where attention saved repeated copies instead, or, with
    # checkpointing, saved nothing (sdpa reading k and v unrepeated saves the very tensors the list holds).
    presents = s.kv_presents if s.kv_repeated or s.checkpointing else 0
    transients = {"logits": s.tokens * s.vocab * s.compute_bytes, "logits_fp32_copy": s.fp32_vocab if s.autocast else 0,
                  "kv_presents": presents}
    return Moment("forward", "forward's end, in cross-entropy", s.kept_gradients,
                  s.layers * s.block_casts + s.lm_head_cast, s.all_blocks_saved, sum(head_block(s).values()),
                  transients)


def _backward_start(s: StepSizes) -> Moment:
    # nll_loss's gradient and log_softmax's gradient (the logits' gradient), both fp32 and vocabulary-sized,
    # while log_softmax's output is still saved. With checkpointing the weight casts went with forward.
    saved_casts = 0 if s.checkpointing else s.layers * s.block_casts
    return Moment("backward", "backward's start, in cross-entropy", s.kept_gradients, saved_casts + s.lm_head_cast,
                  s.all_blocks_saved, sum(head_block(s).values()),
                  {"nll_loss_grad": s.fp32_vocab, "logits_grad": s.fp32_vocab})


def _naive_softmax(s: StepSizes) -> list[Moment]:
    """Naive attention's T x T softmax, where long sequences peak: in the last block's forward, and in the last
    and the first block's backward (the first runs with every later gradient made, and with checkpointing it
    is often the larger), each preceded with checkpointing by the block's recomputed forward."""
    scores, compute_bytes = s.score_elements, s.compute_bytes
    # the gradients a block makes before its attention's: norm2's, SwiGLU's and the output projection's
    own_gradients = (s.hidden + 3 * s.hidden * s.intermediate + s.hidden * s.q_width) * FP32
    # What a block still holds when its backward reaches attention: norm1's tensors, the q/k/v tensors (v's
    # gradient takes v's place), under autocast the casts of norm1's output for q, k and v, and the mask.
    norm1 = s.tokens * FP32 + s.fp32_hidden + (0 if s.autocast else s.fp32_hidden)
    input_casts = 3 * s.tokens * s.hidden * compute_bytes if s.autocast else 0
    at_attention = norm1 + 3 * s.tokens * s.q_width * compute_bytes + input_casts + s.seq_len ** 2
    qkv_casts = (s.hidden * s.q_width + 2 * s.hidden * s.kv_width) * compute_bytes if s.autocast else 0
    # the masked scores (and their fp32 copy under autocast) and the softmax output
    softmax = {"scores": scores * compute_bytes, "scores_fp32": scores * FP32 if s.autocast else 0,
               "probs": scores * FP32}
    # In forward the presents list holds every block's (k, v), counted where repeat_kv made the copies that
    # attention saved (not for checkpointing alone, unlike at forward's end); autocast's fp32 norm output is
    # still an argument.
    moments = [Moment("forward", "last block's softmax", s.kept_gradients, s.earlier_casts + qkv_casts,
                      s.earlier_saved + s.block_inputs + at_attention, 0,
                      {**softmax, "kv_presents": s.kv_presents if s.kv_repeated else 0,
                       "norm_output": s.fp32_hidden if s.autocast else 0})]
    for block, gradients_before, earlier_saved, earlier_casts, block_inputs in (
        ("last", s.head_gradients, s.earlier_saved, s.earlier_casts, s.block_inputs),
        ("first", s.later_gradients, 0, 0, s.fp32_hidden),
    ):
        # softmax's backward: the saved fp32 probabilities, their gradient and the gradient of softmax's input
        moments.append(Moment("backward", f"{block} block's softmax backward",
                              max(s.kept_gradients, gradients_before + own_gradients), earlier_casts + qkv_casts,
                              earlier_saved + block_inputs + at_attention + scores * FP32, 0,
                              {"probs_grad": scores * FP32, "softmax_grad": scores * FP32,
                               "residual_grad": s.fp32_hidden}))
        if s.checkpointing:  # the block's forward recomputed up to its softmax, before the block has gradients
            moments.append(Moment("backward", f"{block} block's recomputed softmax",
                                  max(s.kept_gradients, gradients_before), qkv_casts, block_inputs + at_attention,
                                  0, {**softmax, "residual_grad": s.fp32_hidden}))
    return moments


def _swiglu_backward(s: StepSizes) -> list[Moment]:
    """SwiGLU's backward (gradients of its product, silu and gate, all intermediate-sized) in the last block,
    the first to run, and in the first block, the last to run, when every later gradient exists."""
    in_flight = {"swiglu_grads": 3 * s.tokens * s.intermediate * s.compute_bytes, "residual_grad": s.fp32_hidden}
    # The last block's activations are all alive (with checkpointing recomputed, but for its input, which is
    # among the block inputs). An approximation: without checkpointing its input is counted twice, among the
    # block inputs and in its residual part.
    last_block = s.block_saved - s.fp32_hidden if s.checkpointing else s.block_saved
    return [Moment("backward", "last block's SwiGLU backward", max(s.kept_gradients, s.head_gradients),
                   s.earlier_casts + s.block_casts, s.earlier_saved + s.block_inputs + last_block, 0, in_flight),
            # the first block's own activations (with checkpointing: recomputed) and weight casts
            Moment("backward", "first block's SwiGLU backward", max(s.kept_gradients, s.later_gradients), s.block_casts,
                   s.block_saved, 0, dict(in_flight))]


def _backward_end(s: StepSizes) -> Moment:
    # Every gradient exists; the embedding's dense gradient is made, then added out of place into the tied
    # LM-head gradient (AccumulateGrad's ``grad + new``), so two more vocab x hidden tensors. (Untied, the
    # embedding's gradient simply becomes its .grad, already counted in the gradients.)
    embedding = s.vocab * s.hidden * FP32
    extra = {"embedding_grad": embedding, "tied_grad_sum": embedding} if s.tied else {}
    return Moment("backward", "backward's end, the embedding's gradient", s.all_gradients, 0, 0, 0, extra)


def _optimizer_step(s: StepSizes) -> list[Moment]:
    optimizer = s.spec.optimizer
    if optimizer == "none":
        return []
    temporaries: dict[str, int] = {}  # SGD updates in place
    if optimizer.startswith("adamw"):
        kernel = adamw_implementation(s.spec.device) if optimizer == "adamw" else optimizer.removeprefix("adamw-")
        if kernel == "foreach":  # sqrt(v) for every tensor of a parameter group at once: the matrices' group,
            temporaries = {"adamw_sqrt_v": (s.parameters - (2 * s.layers + 1) * s.hidden) * FP32}  # not the norms
        elif kernel == "forloop":  # one tensor at a time: sqrt(v) and sqrt(v)/bias_correction of the largest
            largest = max(s.vocab * s.hidden, s.hidden * s.intermediate, s.hidden * s.q_width)
            temporaries = {"adamw_sqrt_v": 2 * largest * FP32}
        # fused: one kernel updates m, v and the weight element by element, no temporaries
    return [Moment("optimizer", f"{optimizer} step", s.all_gradients, 0, 0, 0, temporaries)]


def step_moments(s: StepSizes) -> list[Moment]:
    """The moments of one training step that can hold its peak; on a tie the one listed first is the peak."""
    return ([_forward_end(s), _backward_start(s)] + (_naive_softmax(s) if s.naive else []) + _swiglu_backward(s)
            + [_backward_end(s)] + _optimizer_step(s))
