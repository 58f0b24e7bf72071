"""MiniMind: a Llama-style decoder-only language model in one file of plain PyTorch.

Pieces, in the order a token meets them:
  token embedding -> N x Block( RMSNorm -> grouped-query attention with RoPE -> residual,
                                RMSNorm -> SwiGLU (or a mixture of SwiGLU experts) -> residual )
  -> RMSNorm -> LM head (tied to the embedding) -> logits.

The architecture follows jingyaogong/minimind (MiniMind2 and MiniMind3); the parameter names follow
Hugging Face's Llama/Qwen3 so that :mod:`minimind_edu.hf` can export to ``transformers`` without renaming
tricks beyond a prefix.

The whole model is one file (under 500 lines) on purpose, as in nanoGPT: it imports nothing from the
rest of the package, so it can be read top to bottom, copied and reused on its own.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _swiglu_size_minimind2(hidden_size: int) -> int:
    # MiniMind2's rule: 8/3 of the hidden size (keeps SwiGLU's 3 matrices at the cost of a 4x MLP's 2),
    # rounded up to a multiple of 64 for fast matmuls.
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


def _swiglu_size_minimind3(hidden_size: int) -> int:
    return 64 * math.ceil(hidden_size * math.pi / 64)


@dataclass
class ModelConfig:
    """Every size and switch of a MiniMind model. ``intermediate_size=None`` applies MiniMind2's rule."""

    vocab_size: int = 6400
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 2
    intermediate_size: int | None = None
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    qk_norm: bool = False
    # Mixture of experts: num_experts=0 means a dense SwiGLU in every block.
    num_experts: int = 0
    experts_per_token: int = 2
    shared_experts: int = 1
    # The load-balancing loss: the course adds 0.1 x its value over the whole batch; MiniMind2 averaged it per
    # sequence with 0.01, MiniMind3 takes 5e-4 over the batch (the presets below carry upstream's values).
    aux_loss_coef: float = 0.1
    aux_loss_per_sequence: bool = False
    norm_topk_prob: bool = True  # renormalise the chosen experts' router probabilities to sum to 1
    attention: str = "sdpa"  # "sdpa" (fused, memory linear in T) or "naive" (explicit T x T scores)
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = _swiglu_size_minimind2(self.hidden_size)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the sizes cannot make a working model."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "each head gets hidden_size / num_heads dimensions"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}; "
                "in grouped-query attention each key/value head serves an equal group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = hidden_size / num_heads = {self.head_dim} is odd; RoPE rotates pairs of "
                "dimensions, so choose sizes that give an even head_dim"
            )
        if self.attention not in ("sdpa", "naive"):
            raise ValueError(f'attention must be "sdpa" or "naive", got {self.attention!r}')
        if self.num_experts < 0:
            raise ValueError(f"num_experts must be >= 0, got {self.num_experts}")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(
                f"experts_per_token={self.experts_per_token} must be between 1 and num_experts={self.num_experts}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # MiniMind2-small, the "26M" model the course centres on: 25,829,888 parameters.
    "minimind2-small": ModelConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2),
    # MiniMind2, "104M".
    "minimind2": ModelConfig(hidden_size=768, num_layers=16, num_heads=8, num_kv_heads=2),
    # MiniMind2-MoE, "145M" in total, about 2 of 4 routed experts + 1 shared active per token.
    "minimind2-moe": ModelConfig(
        hidden_size=640, num_layers=8, num_heads=8, num_kv_heads=2,
        num_experts=4, experts_per_token=2, shared_experts=1, aux_loss_coef=0.01, aux_loss_per_sequence=True,
    ),
    # MiniMind3 (Qwen3-style): QK-norm, 4 KV heads, SwiGLU size ceil(pi * hidden / 64) * 64.
    "minimind3": ModelConfig(
        hidden_size=768, num_layers=8, num_heads=8, num_kv_heads=4, qk_norm=True,
        intermediate_size=_swiglu_size_minimind3(768), rms_norm_eps=1e-6,
    ),
    # MiniMind3-MoE, "198M-A64M": MiniMind3 with 4 routed experts, top-1, no shared expert (Qwen3-MoE style).
    "minimind3-moe": ModelConfig(
        hidden_size=768, num_layers=8, num_heads=8, num_kv_heads=4, qk_norm=True,
        intermediate_size=_swiglu_size_minimind3(768), rms_norm_eps=1e-6,
        num_experts=4, experts_per_token=1, shared_experts=0, aux_loss_coef=5e-4,
    ),
    # The course's CPU model: small enough that notebook 05 / `make pretrain` learns visibly on 2 cores.
    "course-cpu": ModelConfig(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, max_position_embeddings=2048),
    # A toy for tests and fast-mode notebooks.
    "tiny": ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=512),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset. Change fields with ``dataclasses.replace(get_preset(name), num_layers=12)``:
    the copy is validated again, and ``intermediate_size=None`` recomputes MiniMind2's 8/3 rule for a new width.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name])


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean subtraction and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under autocast: mean of squares in bf16 loses too much precision.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


def rope_cos_sin(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_positions, head_dim) for the rotate-half convention."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # the same frequency for dims i and i + head_dim/2
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: RoPE's 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) pair of ``x`` (B, heads, T, d) by its position's angle."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, d) -> (B, kv_heads * n_rep, T, d): each KV head serves n_rep query heads."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


# scaled_dot_product_attention(enable_gqa=True) arrived in PyTorch 2.5; older versions repeat k and v.
SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def sdpa_reads_kv_unrepeated(cfg: ModelConfig) -> bool:
    """True when ``attention="sdpa"`` may hand k and v to the kernel at ``num_kv_heads`` (``enable_gqa``), so
    no repeated copy is made or saved for backward; False when there is nothing to repeat or torch is old.
    Each call still checks :func:`flash_attention_accepts` on CUDA."""
    return cfg.num_heads > cfg.num_kv_heads and SDPA_HAS_GQA


def flash_attention_accepts(dtype: torch.dtype, capability: tuple[int, int], head_dim: int,
                            dropout: float = 0.0, training: bool = True) -> bool:
    """Whether PyTorch's CUDA flash-attention kernel runs a causal, mask-free call: fp16/bf16, a GPU of compute
    capability 8.0 to 12.1, head_dim <= 256, and for training on sm86/sm89/sm120 head_dim <= 192 (or above 224
    without dropout). On CUDA it is the only kernel that reads grouped k and v (``enable_gqa``): when it
    cannot run, the model repeats k and v so that the memory-efficient kernel can, instead of the math kernel
    that would hold every T x T score (PyTorch falls back to it silently)."""
    if dtype not in (torch.float16, torch.bfloat16) or not (8, 0) <= capability <= (12, 1) or head_dim > 256:
        return False
    if training and ((8, 6) <= capability <= (8, 9) or capability >= (12, 0)):
        return head_dim <= 192 or (head_dim > 224 and dropout == 0.0)
    return True


def _grouped_kv_for_this_call(q: torch.Tensor, dropout_p: float, training: bool, masked: bool) -> bool:
    if q.device.type != "cuda":  # the CPU's fused kernel reads grouped heads, masked too (dropout: math anyway)
        return True
    if masked:  # flash takes no mask; the memory-efficient kernel does, with repeated k and v
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else q.dtype
    return flash_attention_accepts(dtype, torch.cuda.get_device_capability(q.device), q.shape[-1], dropout_p,
                                   training)


KVPair = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values), each (B, kv_heads, T_so_far, head_dim)
KVCache = list  # one KVPair per layer


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.implementation = cfg.attention
        self.gqa_kernel = sdpa_reads_kv_unrepeated(cfg)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_kv: KVPair | None = None) -> tuple[torch.Tensor, KVPair]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # Qwen3 / MiniMind3: normalise each head's q and k before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        present = (k, v)
        n_rep = self.num_heads // self.num_kv_heads
        t_past = k.shape[2] - t
        dropout_p = self.dropout if self.training else 0.0
        if self.implementation == "sdpa":
            # enable_gqa: the kernel reads each KV head for its whole group of query heads, so no repeated
            # copy of k and v is made (or kept alive for backward). Same forward values as repeat_kv. Only
            # where a fused kernel takes it (see flash_attention_accepts), and not with the decoding mask.
            grouped = self.gqa_kernel and _grouped_kv_for_this_call(q, dropout_p, self.training, t_past > 0)
            gqa = {"enable_gqa": True} if grouped else {}
            k_all, v_all = (k, v) if gqa else (repeat_kv(k, n_rep), repeat_kv(v, n_rep))
            if t_past == 0:
                y = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=t > 1, dropout_p=dropout_p, **gqa)
            else:  # new tokens see every cached token and the earlier new ones
                mask = torch.ones(t, t_past + t, dtype=torch.bool, device=x.device).tril(diagonal=t_past)
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, dropout_p=dropout_p, **gqa)
        else:
            y = naive_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), t_past, dropout_p)
        y = y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(y)), present


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t_past: int = 0, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out: the (T x T) scores are materialised."""
    t, t_total = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t_total, dtype=torch.bool, device=q.device).triu(diagonal=t_past + 1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = F.softmax(scores.float(), dim=-1).type_as(q)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


class FeedForward(nn.Module):
    """SwiGLU: down( silu(gate(x)) * up(x) )."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEFeedForward(nn.Module):
    """A router picks ``experts_per_token`` of ``num_experts`` SwiGLU experts per token; shared experts see all.

    ``aux_loss`` (set on every forward) is the Switch-Transformer load-balancing loss
    ``num_experts * sum_i f_i * P_i``, where ``f_i`` is the fraction of routing slots sent to expert ``i`` and
    ``P_i`` the mean router probability of expert ``i``. It equals 1.0 when routing is perfectly balanced
    and grows towards ``num_experts / experts_per_token`` as routing collapses onto the same experts.
    The model adds ``aux_loss_coef * aux_loss`` (summed over layers) to the training loss. With
    ``aux_loss_per_sequence`` (MiniMind2) ``f`` and ``P`` are taken per sequence and the losses averaged;
    otherwise over the whole batch (MiniMind3, whose top-1 formula is this one). ``norm_topk_prob=False``
    weights each chosen expert by its raw router probability instead of renormalising the chosen ones.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k = cfg.num_experts, cfg.experts_per_token
        self.norm_topk_prob, self.aux_per_sequence = cfg.norm_topk_prob, cfg.aux_loss_per_sequence
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.num_experts))
        self.shared_experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.shared_experts))
        self.aux_loss = torch.zeros(())
        self.last_topk_idx: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        flat = x.reshape(-1, h)
        probs = F.softmax(self.gate(flat).float(), dim=-1)  # (N, E)
        topk_p, topk_idx = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:  # renormalise over the chosen experts (with top-1: weight 1)
            topk_p = topk_p / topk_p.sum(-1, keepdim=True)
        topk_p = topk_p.to(x.dtype)
        self.last_topk_idx = topk_idx.detach()
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_pos, slot = (topk_idx == e).nonzero(as_tuple=True)
            if token_pos.numel():
                out.index_add_(0, token_pos, expert(flat[token_pos]) * topk_p[token_pos, slot, None])
        for shared in self.shared_experts:
            out = out + shared(flat)
        slots = F.one_hot(topk_idx, self.num_experts).float().sum(1)  # (N, E): a token's slots per expert
        if self.aux_per_sequence:  # MiniMind2: the loss of each sequence's own routing, averaged
            slot_fraction, mean_p = slots.view(b, t, -1).mean(1) / self.top_k, probs.view(b, t, -1).mean(1)
            self.aux_loss = self.num_experts * (slot_fraction * mean_p).sum(-1).mean()
        else:
            self.aux_loss = self.num_experts * (slots.mean(0) / self.top_k * probs.mean(0)).sum()
        return out.view(b, t, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoEFeedForward(cfg) if cfg.num_experts else FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_kv: KVPair | None = None) -> tuple[torch.Tensor, KVPair]:
        attn_out, present = self.self_attn(self.input_layernorm(x), cos, sin, past_kv)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor | None
    past_key_values: KVCache | None


class MiniMind(nn.Module):
    """The causal language model: ``forward(input_ids, targets=None)`` returns logits and, given targets, the loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            # One matrix both reads tokens in and scores them out: saves vocab x hidden parameters.
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_cos_sin(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection shrinks with depth so the
        # residual stream's variance does not grow with the number of layers.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (the tied embedding / LM head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        b, t = input_ids.shape
        t_past = past_key_values[0][0].shape[2] if past_key_values else 0
        if t_past + t > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {t_past + t} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}; shorten the input or raise the limit in the config"
            )
        cos = self.rope_cos[t_past : t_past + t].to(input_ids.device)
        sin = self.rope_sin[t_past : t_past + t].to(input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids))
        presents: KVCache = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            if self.gradient_checkpointing and self.training:
                x, present = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, past, use_reentrant=False)
            else:
                x, present = layer(x, cos, sin, past)
            presents.append(present)
        logits = self.lm_head(self.norm(x))
        aux = None
        if self.config.num_experts:
            aux = sum(layer.mlp.aux_loss for layer in self.layers)
        loss = None
        if targets is not None:
            # Targets of -100 (cross_entropy's default ignore_index: data.IGNORE_INDEX marks padding) add nothing.
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            if aux is not None and self.training:
                loss = loss + self.config.aux_loss_coef * aux
        return ModelOutput(logits, loss, aux, presents if use_cache else None)


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts by part, computed from the config (no model is built)."""
    h, d, kv = cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads
    attention = h * cfg.num_heads * d * 2 + h * kv * d * 2 + (2 * d if cfg.qk_norm else 0)
    swiglu = 3 * h * cfg.intermediate_size
    mlp = swiglu if not cfg.num_experts else (cfg.num_experts + cfg.shared_experts) * swiglu + h * cfg.num_experts
    norms = 2 * h
    per_block = attention + mlp + norms
    embedding = cfg.vocab_size * h
    lm_head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    return {
        "embedding": embedding,
        "attention_per_block": attention,
        "mlp_per_block": mlp,
        "norms_per_block": norms,
        "per_block": per_block,
        "blocks": per_block * cfg.num_layers,
        "final_norm": h,
        "lm_head": lm_head,
        "total": embedding + per_block * cfg.num_layers + h + lm_head,
    }
