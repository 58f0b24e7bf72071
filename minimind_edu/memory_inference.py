"""Memory of generation: the KV cache, which grows with every token a model reads or writes.

Training's peak comes from activations; generation's from the cache of keys and values. For every layer, every
sequence of the batch and every token so far, the model keeps k and v: ``num_kv_heads x head_dim`` numbers each,
in the model's dtype. Grouped-query attention is what keeps this small (MiniMind2's 2 KV heads for 8 query
heads: a quarter of a full cache). The course's model grows its cache with ``torch.cat`` (model.Attention),
so while one decoding step runs, the previous cache and the new one, one token longer, are both alive: the
peak holds the cache twice. (A preallocated cache, as ``transformers``' StaticCache, holds it once.)

:func:`kv_cache_bytes` is the cache; :func:`generation_memory` the peak of the last decoding step;
:func:`measure_generation` runs a real generation on the CPU and counts the same bytes.
"""
from __future__ import annotations

import torch

from .memory_measure import StorageTracker
from .model import MiniMind, ModelConfig, count_parameters

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bytes_per_element(precision: str) -> int:
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {', '.join(BYTES)}; got {precision!r}")
    return BYTES[precision]


def kv_cache_bytes(cfg: ModelConfig, batch_size: int, context_len: int, precision: str = "bf16") -> int:
    """Bytes of the KV cache after ``context_len`` tokens (prompt and generated) for ``batch_size`` sequences,
    the model's weights in ``precision``: 2 (k and v) x layers x batch x kv_heads x head_dim x tokens x bytes."""
    if batch_size < 1 or context_len < 1:
        raise ValueError(f"batch_size and context_len must be at least 1, got {batch_size} and {context_len}")
    return (2 * cfg.num_layers * batch_size * cfg.num_kv_heads * cfg.head_dim * context_len
            * _bytes_per_element(precision))


def generation_memory(cfg: ModelConfig, batch_size: int, context_len: int, precision: str = "bf16") -> dict[str, int]:
    """The peak of the step that writes token ``context_len``, term by term, and its ``total``: the weights and
    RoPE tables, the cache before the step and the one it builds (``torch.cat``), the step's logits and the
    previous step's, which the decoding loop holds until the step returns."""
    nbytes = _bytes_per_element(precision)
    terms = {
        "weights": count_parameters(cfg)["total"] * nbytes,
        "buffers": 2 * cfg.max_position_embeddings * cfg.head_dim * nbytes,  # RoPE cos, sin: the model's dtype
        "kv_cache": kv_cache_bytes(cfg, batch_size, context_len, precision),
        "previous_kv_cache": kv_cache_bytes(cfg, batch_size, context_len - 1, precision) if context_len > 1 else 0,
        "logits": batch_size * cfg.vocab_size * nbytes,
        "previous_logits": batch_size * cfg.vocab_size * nbytes,  # the last step's output, still held by the loop
    }
    return {**terms, "total": sum(terms.values())}


def measure_generation(cfg: ModelConfig, batch_size: int, context_len: int, precision: str = "bf16",
                       prompt_len: int = 8, seed: int = 0) -> dict[str, int]:
    """Generate greedily up to ``context_len`` tokens on the CPU and count live tensor storages.

    Returns ``kv_cache`` (the bytes of the final cache's tensors), ``peak`` (the largest live total, weights
    included) and ``weights``. The model is cast to ``precision``, as a checkpoint loaded in bf16 would be."""
    torch.manual_seed(seed)
    model = MiniMind(cfg).to(DTYPES[precision]).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch_size, min(prompt_len, context_len)))
    tracker = StorageTracker()
    tracker.watch(*model.parameters(), *model.buffers())
    weights = tracker.live
    with torch.no_grad(), tracker:
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(context_len - ids.shape[1]):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for kv in past for t in kv}
    return {"kv_cache": sum(storages.values()), "peak": tracker.peak, "weights": weights}
