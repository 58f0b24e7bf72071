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

The module is longer than the course's others (about 450 lines) because the moments are one model: each
moment reuses the same sizes, and splitting dense, MoE and sharded moments apart would scatter that model.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory_kernels import KernelChoice, training_kernel
from .memory_measure import StepSpec
from .model import ModelConfig, count_parameters
from .optim import adamw_implementation

FP32, INT64 = 4, 8  # bytes per element


# --- the sizes of a step ------------------------------------------------------------------------------------
def layer_matrix_params(cfg: ModelConfig) -> int:
    """Weights in one block's matrices (q, k, v, o, SwiGLU's three; with MoE the router and every expert's):
    what autocast casts for each block."""
    hidden, head_dim = cfg.hidden_size, cfg.head_dim
    return 2 * hidden * (cfg.num_heads + cfg.num_kv_heads) * head_dim + count_parameters(cfg)["mlp_per_block"]


class StepSizes:
    """Every size the moments of a step need, derived once from the model config and the step. Counts and
    widths are in elements; tensors (``fp32_*``, ``*_casts``, ``*_saved``, ``*_gradients``...) in bytes."""

    def __init__(self, cfg: ModelConfig, spec: StepSpec, kernel: KernelChoice | None = None,
                 worst_routing: bool = False):
        counts = count_parameters(cfg)
        self.kernel = kernel or training_kernel(cfg, spec)
        self.spec, self.cfg = spec, cfg
        self.batch, self.seq_len, self.tokens = spec.batch_size, spec.seq_len, spec.batch_size * spec.seq_len
        self.hidden, self.vocab, self.layers = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
        self.heads, self.intermediate = cfg.num_heads, cfg.intermediate_size
        self.q_width = cfg.num_heads * cfg.head_dim  # q's width, and k's and v's once repeated to every query head
        self.kv_width = cfg.num_kv_heads * cfg.head_dim  # k's and v's width as projected
        self.parameters, self.block_parameters = counts["total"], counts["per_block"]
        self.rope_tables = 2 * cfg.max_position_embeddings * cfg.head_dim * FP32  # cos and sin
        # per block 4 attention matrices and 2 norms (+2 QK-norms), the SwiGLU's 3 matrices (MoE: 3 per expert
        # and the router); the embedding, the final norm, an untied LM head
        mlp_tensors = 3 * (cfg.num_experts + cfg.shared_experts) + 1 if cfg.num_experts else 3
        self.weight_tensors = (1 + (6 + 2 * cfg.qk_norm + mlp_tensors) * cfg.num_layers + 1
                               + (0 if cfg.tie_word_embeddings else 1))
        # the norm gains: no weight decay, so not in AdamW's foreach group of matrices
        self.vector_parameters = ((2 * cfg.hidden_size + 2 * cfg.qk_norm * cfg.head_dim) * cfg.num_layers
                                  + cfg.hidden_size)
        self.naive, self.checkpointing = self.kernel.name == "naive", spec.checkpointing
        self.tied = cfg.tie_word_embeddings
        self.math = self.kernel.name == "math"  # SDPA's fallback: fp32 T x T probabilities, as naive attention
        # bf16/fp16 autocast: matmuls in the low precision; weights, gradients and the residual stream stay fp32
        self.autocast = spec.precision != "fp32"
        self.compute_bytes = 2 if self.autocast else FP32  # bytes per element of the compute dtype
        # repeat_kv copies k and v to every query head (when there are fewer KV heads): naive attention does,
        # sdpa does where no fused kernel reads them unrepeated
        self.kv_repeated = cfg.num_heads > cfg.num_kv_heads and not self.kernel.grouped_kv
        self.qk_norm, self.kv_heads = cfg.qk_norm, cfg.num_kv_heads
        # QK-norm's output is fp32 under autocast (an fp32 gain times a bf16 tensor), so are q and k after RoPE
        self.k_bytes = FP32 if cfg.qk_norm else self.compute_bytes
        # dropout keeps a mask per element it drops: a float "noise" tensor of the input's dtype on the CPU
        # (ATen's composite dropout), a bool mask on CUDA (the fused native_dropout)
        self.dropout = cfg.dropout > 0
        self.cuda = spec.device == "cuda"
        self.mask_bytes = 1 if self.cuda else self.compute_bytes  # a mask over a low-precision (or fp32) tensor
        self.embedding_dropout = self.tokens * self.hidden * (1 if self.cuda else FP32) if self.dropout else 0
        # mixture of experts: routing slots per block (every token picks experts_per_token experts), and the
        # most tokens one expert's SwiGLU sees: balanced routing, or all of them (the bound)
        self.experts, self.top_k = cfg.num_experts, (cfg.experts_per_token if cfg.num_experts else 1)
        self.shared = cfg.shared_experts if cfg.num_experts else 0
        self.norm_topk_prob = cfg.norm_topk_prob
        self.slots = self.tokens * self.top_k
        balanced = -(-self.slots // self.experts) if self.experts else self.tokens
        self.expert_tokens = self.tokens if worst_routing else balanced
        self.ffn_tokens = max(self.expert_tokens, self.tokens if self.shared or not self.experts else 0)
        self.mlp_parameters = counts["mlp_per_block"]
        self.fp32_hidden = self.tokens * self.hidden * FP32  # one fp32 tensor as wide as the residual stream
        self.fp32_vocab = self.tokens * self.vocab * FP32  # one fp32 tensor as wide as the logits
        self.score_elements = self.batch * self.heads * self.seq_len ** 2  # naive attention: T x T per head
        # autocast's low-precision copies of one block's weight matrices, and of the (tied) LM head's
        self.block_casts = layer_matrix_params(cfg) * self.compute_bytes if self.autocast else 0
        self.lm_head_cast = self.vocab * self.hidden * self.compute_bytes if self.autocast else 0
        # every block's (k, v) in the model's list of presents
        self.kv_presents = self.layers * self.tokens * self.kv_width * (self.k_bytes + self.compute_bytes)
        self.all_gradients = self.parameters * FP32
        self.kept_gradients = self.all_gradients if spec.grad_accum_steps > 1 else 0  # alive through micro-steps
        self.head_gradients = (self.vocab * self.hidden + self.hidden) * FP32  # LM head and final norm: made first
        self.later_gradients = (self.parameters - self.block_parameters) * FP32  # all but the first block's
        self.block_parts = _saved_by_one_block(self)
        self.block_saved = sum(self.block_parts.values())
        # With checkpointing a block keeps only its fp32 input and recomputes its insides in backward.
        # (and the embedding's dropout mask, alive until the embedding's backward, the step's last)
        self.all_blocks_saved = (self.layers * (self.fp32_hidden if self.checkpointing else self.block_saved)
                                 + self.embedding_dropout)
        # Inside the last block's backward: the blocks before it, and the block inputs still alive (the last
        # block's own, or with checkpointing every block's, the earlier blocks having saved nothing else).
        self.earlier_saved = 0 if self.checkpointing else (self.layers - 1) * self.block_saved
        self.earlier_casts = 0 if self.checkpointing else (self.layers - 1) * self.block_casts
        self.block_inputs = ((self.layers * self.fp32_hidden if self.checkpointing else self.fp32_hidden)
                             + self.embedding_dropout)


def _saved_by_one_block(s: StepSizes) -> dict[str, int]:
    """Bytes one block saves for backward (without checkpointing), by part. Names match model.py."""
    tokens, compute_bytes, autocast = s.tokens, s.compute_bytes, s.autocast
    input_cast = tokens * s.hidden * compute_bytes  # a low-precision cast of a normed input, made per consumer
    # Both RMSNorms save rsqrt (1 fp32 per token) and the normalised fp32 tensor; in fp32 the linears that
    # follow save the norm's output too, under autocast they save their own low-precision casts instead.
    norms = 2 * (tokens * FP32 + s.fp32_hidden) + (0 if autocast else 2 * s.fp32_hidden)
    parts = {"norms": norms}
    if s.qk_norm:  # per head: q's and k's fp32 input, rsqrt and normalised output (cast back to their dtype)
        parts["qk_norm"] = tokens * ((s.q_width + s.kv_width) * (FP32 + compute_bytes) + (s.heads + s.kv_heads) * FP32)
    # q after RoPE, and k, v: repeated to every head (repeat_kv copies) for naive attention, kept at
    # num_kv_heads when sdpa reads them with enable_gqa. Under autocast q, k and v each also save their own
    # cast of the normed input. The math kernel saves fp32 copies of its own instead (below).
    kv_width = s.q_width if s.kv_repeated else s.kv_width
    casts = 3 * input_cast if autocast else 0
    parts["qkv"] = casts + (0 if s.math else tokens * (s.q_width + 2 * kv_width) * compute_bytes)
    output = tokens * s.q_width * compute_bytes  # attention's output, heads side by side
    scores = s.score_elements
    if s.naive:  # causal mask (bool), fp32 softmax probabilities (and their cast), the re-laid-out output
        probabilities = scores * FP32 + (scores * compute_bytes if autocast else 0)
        attention = s.seq_len ** 2 + probabilities + output
        if s.dropout:  # its mask over the probabilities (the dropped ones take the place of their cast)
            attention += scores * s.mask_bytes
    elif s.math:  # fp32 q (scaled), k and v at every head, fp32 probabilities, the re-laid-out output
        attention = 3 * tokens * s.q_width * FP32 + scores * FP32 + output
        if s.dropout:  # the dropout mask over the probabilities and the dropped fp32 probabilities
            attention += scores * ((1 if s.cuda else FP32) + FP32)
    else:  # the fused kernel saves its output and one fp32 log-sum-exp per head and query
        queries = -(-s.seq_len // 32) * 32 if s.kernel.name == "efficient" else s.seq_len  # padded to 32
        attention = output + s.batch * queries * s.heads * FP32
    parts["attention"] = attention
    if s.dropout:  # after the output projection and after the feed-forward (every expert's, with MoE)
        ffn_outputs = s.tokens * s.shared + s.slots if s.experts else s.tokens
        parts["dropout"] = (tokens + ffn_outputs) * s.hidden * s.mask_bytes
    if s.experts:
        parts.update(_moe_saved(s, input_cast))
    else:
        # gate, silu(gate), up, silu(gate) * up; under autocast gate and up each save a cast of their input.
        parts["swiglu"] = 4 * tokens * s.intermediate * compute_bytes + (2 * input_cast if autocast else 0)
    parts["residual"] = 2 * s.fp32_hidden  # the fp32 residual stream entering each norm
    return parts


def _moe_saved(s: StepSizes, input_cast: int) -> dict[str, int]:
    """What one mixture-of-experts block saves beyond attention: the router and the experts. Each routed
    expert saves the same tensors per token as a SwiGLU, for the tokens sent to it; every token fills
    ``experts_per_token`` slots, so their sum does not depend on how the router balances them."""
    cb, autocast, slots, tokens = s.compute_bytes, s.autocast, s.slots, s.tokens
    # the router: its input's cast, fp32 probabilities, the chosen experts' ids (int64) and, renormalised, the
    # chosen probabilities and their sum, and the slot fractions of the balancing loss
    router = ((input_cast if autocast else 0) + tokens * s.experts * FP32 + slots * INT64
              + (tokens * FP32 + slots * FP32 if s.norm_topk_prob else 0)
              + s.experts * FP32 * (s.batch if s.cfg.aux_loss_per_sequence else 1))
    # per slot: its (token, slot) index pair, the gathered input (fp32; under autocast a cast for gate and one
    # for up), the SwiGLU's 4 tensors, the expert's output, its router weight and the weighted fp32 output
    gathered = 2 * s.hidden * cb if autocast else s.hidden * FP32
    routed = slots * (2 * INT64 + gathered + 4 * s.intermediate * cb + s.hidden * cb + FP32 + s.hidden * FP32)
    shared = s.shared * (4 * tokens * s.intermediate * cb + (2 * input_cast if autocast else 0))
    return {"router": router, "experts": routed + shared}


def layer_activations(cfg: ModelConfig, batch_size: int, seq_len: int, precision: str = "bf16",
                      attention: str | None = None) -> dict[str, int]:
    """Bytes one block saves for backward (no checkpointing), by part. Names match model.py."""
    return StepSizes(cfg, StepSpec(batch_size, seq_len, precision, attention=attention)).block_parts


def worst_routing_sizes(s: StepSizes) -> StepSizes:
    """The same step with every token routed to the same experts: the bound on an MoE step's peak."""
    return StepSizes(s.cfg, s.spec, s.kernel, worst_routing=True)


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
    # checkpointing, saved nothing (sdpa reading k and v unrepeated saves the very tensors the list holds, but
    # for k after QK-norm under autocast: fp32 in the list, its low-precision cast in the kernel).
    presents = _presents_not_saved(s)
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
    # the gradients a block makes before its attention's: norm2's, the feed-forward's and the output projection's
    own_gradients = (s.hidden + s.mlp_parameters + s.hidden * s.q_width) * FP32
    # What a block still holds when its backward reaches attention: norm1's tensors, the q/k/v tensors (v's
    # gradient takes v's place; the math kernel's are fp32 copies), under autocast the casts of norm1's output
    # for q, k and v, naive attention's mask and QK-norm's tensors (the attention dropout's mask is used, and
    # freed, before the softmax's backward runs).
    norm1 = s.tokens * FP32 + s.fp32_hidden + (0 if s.autocast else s.fp32_hidden)
    input_casts = 3 * s.tokens * s.hidden * compute_bytes if s.autocast else 0
    qkv = 3 * s.tokens * s.q_width * (FP32 if s.math else compute_bytes)
    at_attention = norm1 + qkv + input_casts + (0 if s.math else s.seq_len ** 2) + s.block_parts.get("qk_norm", 0)
    qkv_casts = (s.hidden * s.q_width + 2 * s.hidden * s.kv_width) * compute_bytes if s.autocast else 0
    # the masked scores (naive: in the compute dtype, and their fp32 copy under autocast; math: fp32, with its
    # fp32 causal bias) and the softmax output
    # (with dropout, the math kernel's mask and dropped probabilities beside them, in forward and in backward)
    math_dropout = scores * (1 if s.cuda else FP32) if s.math and s.dropout else 0
    if math_dropout:
        softmax = {"probs": scores * FP32, "dropout_mask": math_dropout, "dropped_probs": scores * FP32,
                   "causal_bias": s.seq_len ** 2 * FP32}
    elif s.math:
        softmax = {"scores": scores * FP32, "causal_bias": s.seq_len ** 2 * FP32, "probs": scores * FP32}
    else:
        softmax = {"scores": scores * compute_bytes, "scores_fp32": scores * FP32 if s.autocast else 0,
                   "probs": scores * FP32}
    # In forward the presents list holds every block's (k, v), counted where repeat_kv made the copies that
    # attention saved (not for checkpointing alone, unlike at forward's end); autocast's fp32 norm output is
    # still an argument.
    moments = [Moment("forward", "last block's softmax", s.kept_gradients, s.earlier_casts + qkv_casts,
                      s.earlier_saved + s.block_inputs + at_attention, 0,
                      {**softmax, "kv_presents": _presents_not_saved(s, checkpointing=False),
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
                               "residual_grad": s.fp32_hidden, "dropout_mask": math_dropout}))
        if s.checkpointing:  # the block's forward recomputed up to its softmax, before the block has gradients
            moments.append(Moment("backward", f"{block} block's recomputed softmax",
                                  max(s.kept_gradients, gradients_before), qkv_casts, block_inputs + at_attention,
                                  0, {**softmax, "residual_grad": s.fp32_hidden}))
    return moments


def _swiglu_backward(s: StepSizes) -> list[Moment]:
    """SwiGLU's backward (gradients of its product, silu and gate, all intermediate-sized) in the last block,
    the first to run, and in the first block, the last to run, when every later gradient exists."""
    # (with MoE: of the expert that sees the most tokens, one expert's backward running at a time)
    in_flight = {"swiglu_grads": 3 * s.ffn_tokens * s.intermediate * s.compute_bytes, "residual_grad": s.fp32_hidden}
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
            temporaries = {"adamw_sqrt_v": (s.parameters - s.vector_parameters) * FP32}  # not the norms
        elif kernel == "forloop":  # one tensor at a time: sqrt(v) and sqrt(v)/bias_correction of the largest
            largest = max(s.vocab * s.hidden, s.hidden * s.intermediate, s.hidden * s.q_width)
            temporaries = {"adamw_sqrt_v": 2 * largest * FP32}
        # fused: one kernel updates m, v and the weight element by element, no temporaries
    return [Moment("optimizer", f"{optimizer} step", s.all_gradients, 0, 0, 0, temporaries)]


def _presents_not_saved(s: StepSizes, checkpointing: bool = True) -> int:
    """Bytes of the presents list (every block's k and v) that no backward saves as the very same tensor
    (``checkpointing=False``: as if the blocks had saved their tensors, inside a block's forward)."""
    if s.kv_repeated or (checkpointing and s.checkpointing) or s.math:
        return s.kv_presents
    return s.layers * s.tokens * s.kv_width * FP32 if s.qk_norm and s.autocast else 0


def step_moments(s: StepSizes) -> list[Moment]:
    """The moments of one training step that can hold its peak; on a tie the one listed first is the peak."""
    return ([_forward_end(s), _backward_start(s)] + (_naive_softmax(s) if s.kernel.quadratic else [])
            + _swiglu_backward(s)
            + [_backward_end(s)] + _optimizer_step(s))


# --- one GPU of several: DDP, ZeRO-1, FSDP2 -----------------------------------------------------------------
def _parameter_shapes(cfg: ModelConfig) -> tuple[list[list[tuple[int, ...]]], list[tuple[int, ...]], int]:
    """Shapes of every parameter per AdamW group (``optim.param_groups`` order), of the root unit's
    (embedding = tied LM head, final norm, untied head) and the count of one block's elements. From a model
    built on the meta device: no memory."""
    import torch

    from .model import MiniMind
    from .optim import param_groups

    with torch.device("meta"):
        model = MiniMind(cfg)
    groups = [[tuple(p.shape) for p in g["params"]] for g in param_groups(model, 0.0)]
    in_blocks = {id(p) for p in model.layers.parameters()}
    root = [tuple(p.shape) for p in model.parameters() if id(p) not in in_blocks]
    return groups, root, sum(p.numel() for p in model.layers[0].parameters())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def zero1_partition(cfg: ModelConfig, world_size: int) -> list[tuple[int, int]]:
    """(elements, tensors) of AdamW's state each rank keeps under ZeRO-1: ZeroRedundancyOptimizer's own rule,
    group by group, largest tensor first, each to the rank holding the fewest elements so far."""
    groups, _, _ = _parameter_shapes(cfg)
    sizes, tensors = [0] * world_size, [0] * world_size
    for shapes in groups:
        for numel in sorted((_numel(s) for s in shapes), reverse=True):
            rank = sizes.index(min(sizes))
            sizes[rank] += numel
            tensors[rank] += 1
    return list(zip(sizes, tensors))


def fsdp_shard_elements(shape: tuple[int, ...], world_size: int) -> int:
    """Elements of one rank's FSDP2 shard of a parameter: dim 0 padded up to a multiple of the world size."""
    return -(-shape[0] // world_size) * _numel(shape[1:])


def sharded_step(s: StepSizes, static: dict[str, int], moments: list[Moment]) -> tuple[dict[str, int], list[Moment]]:
    """One GPU's static terms and moments when ``s.spec.world_size`` ranks train with ``s.spec.strategy``
    (each on its own ``batch_size``); the single-GPU ones unchanged for one rank.

    * ddp: DDP copies every gradient into flat buckets (``bucket_cap_mb`` each, ``gradient_as_bucket_view``
      off, PyTorch's default) made when DDP wraps the model: one more fp32 copy of all gradients, for good.
    * zero1: DDP's buckets, and AdamW's m, v and step only for this rank's share of the tensors
      (:func:`zero1_partition`; the busiest rank is the peak GPU).
    * fsdp: weights, gradients and AdamW's state are 1/N shards (:func:`fsdp_shard_elements`), but the root
      unit (embedding = tied LM head, final norm) is gathered whole from forward to backward's end; a block
      is gathered while it runs (forward, and backward with the next block's prefetched all-gather), and
      backward's start already all-gathers the last block's weights (prefetch). Gradients are 1/N shards once
      a unit is reduce-scattered; the root unit's stay whole until backward's end (its tied weight's gradient
      is complete only after the embedding's backward), and FSDP2 holds each reduce-scatter's input (one
      block's whole gradients) until the next reduce-scatter. Under gradient accumulation FSDP2 keeps whole
      gradients between micro-batches, which this does not model (the tests measure one micro-batch)."""
    world, strategy = s.spec.world_size, s.spec.strategy
    if world == 1:
        return static, moments
    static = dict(static)
    gradients = s.parameters * FP32
    if strategy in ("ddp", "zero1"):
        static["gradient_buckets"] = gradients
        if strategy == "zero1":
            elements, tensors = max(zero1_partition(s.cfg, world))
            static["optimizer_state"] = 2 * elements * FP32 + tensors * FP32
        return static, moments
    groups, root, block = _parameter_shapes(s.cfg)
    shard = sum(fsdp_shard_elements(shape, world) for g in groups for shape in g)
    static["weights"] = shard * FP32
    static["optimizer_state"] = 2 * shard * FP32 + FP32 * s.weight_tensors
    root_bytes = sum(_numel(shape) for shape in root) * FP32
    block_bytes = block * FP32
    out = []
    for m in moments:
        if m.phase == "optimizer":
            gathered = 0
        elif m.name.startswith(("forward's end", "backward's start")):
            gathered = root_bytes + (block_bytes if m.phase == "backward" else 0)
        elif m.name.startswith("backward's end"):
            gathered = root_bytes
        else:  # inside a block: it and, in backward, the prefetched next one
            gathered = root_bytes + block_bytes * (2 if m.phase == "backward" else 1)
        transients = {**m.transients, "gathered_weights": gathered}
        if m.phase == "optimizer":
            grads = -(-m.gradients // world)
        elif m.phase == "backward" and m.gradients >= s.head_gradients:
            # The root unit's gradient (the tied LM head's, made first) stays whole until backward's end: FSDP
            # reduce-scatters a unit once all its parameters' gradients are in, and the embedding's comes last.
            grads = s.head_gradients + (m.gradients - s.head_gradients) // world
            if m.name.startswith("backward's end") or (m.name.startswith("first block's") and s.cfg.num_layers > 1):
                # FSDP2 holds the last reduce-scatter's input (a block's whole gradients) until the next one
                transients["reduce_scatter_input"] = block_bytes
        else:
            grads = m.gradients // world
        out.append(Moment(m.phase, m.name, grads, m.low_precision_weights, m.activations, m.head, transients))
    return static, out
