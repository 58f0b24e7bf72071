"""Sampling text from a MiniMind model: temperature, top-k, top-p, a KV cache, and a streaming form."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .model import MiniMind
from .tokenizer import BOS_ID, EOS_ID


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability >= top_p."""
    logits = logits.clone()
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits[logits < kth] = float("-inf")
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the best token always stays)
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token id from last-position logits of shape (B, vocab); temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_generate(
    model: MiniMind,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; stops at ``eos_token_id`` (not yielded), the budget or the context limit."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.as_tensor(list(prompt_ids) if not torch.is_tensor(prompt_ids) else prompt_ids, dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the bos id 1)")
    ids = ids.view(1, -1).to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    max_len = model.config.max_position_embeddings
    past = None
    next_input = ids
    try:
        for _ in range(max_new_tokens):
            if ids.shape[1] >= max_len:
                break
            if use_cache:
                out = model(next_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                out = model(ids)
            token = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, generator)
            if eos_token_id is not None and token.item() == eos_token_id:
                break
            yield int(token.item())
            next_input = token.view(1, 1)
            ids = torch.cat([ids, next_input], dim=1)
    finally:
        model.train(was_training)


def generate(model: MiniMind, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int = 64, **kwargs) -> list[int]:
    """The new token ids, all at once (see :func:`stream_generate` for the options)."""
    return list(stream_generate(model, prompt_ids, max_new_tokens, **kwargs))


def stream_text_from_ids(
    model: MiniMind, tokenizer: Tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 64, **kwargs
) -> Iterator[str]:
    """Yield pieces of decoded text as new tokens arrive after ``prompt_ids``; stops at EOS unless told otherwise.

    A Chinese character is often 2 or 3 byte-level tokens; text is only yielded once its bytes are complete,
    so a half character (shown as U+FFFD) is never printed.
    """
    kwargs.setdefault("eos_token_id", EOS_ID)
    new_ids: list[int] = []
    shown = ""
    for token in stream_generate(model, prompt_ids, max_new_tokens, **kwargs):
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text


def stream_text(model: MiniMind, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64, **kwargs) -> Iterator[str]:
    """Yield pieces of decoded text continuing ``prompt`` (see :func:`stream_text_from_ids`).

    The prompt starts with ``<|im_start|>`` as the beginning-of-text marker, as every document did in pretraining.
    """
    prompt_ids = [BOS_ID] + tokenizer.encode(prompt).ids
    yield from stream_text_from_ids(model, tokenizer, prompt_ids, max_new_tokens, **kwargs)
