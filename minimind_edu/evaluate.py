"""How good is a trained model, per text type: validation loss and bits per byte on held-out text.

The shipped validation text has three types (:data:`minimind_edu.corpus.TEXT_TYPES`): English stories
(TinyStories), Chinese verse (Tang poems) and Chinese prose (short modern stories). Loss (nats per token)
depends on the tokenizer: the course tokenizer cuts them into 0.26, 1.03 and 0.70 tokens per character
respectively, which makes their losses incomparable. Bits per byte divides the same total surprise by the
text's UTF-8 bytes instead, so it compares text types, tokenizers and models (a model that knew nothing
about byte-level text would need 8 bits per byte; gzip -9 needs 2.4 on the shipped English validation
text, 3.9 on the verse, 3.1 on the prose). tests/test_evaluate.py measures these figures.

    results = evaluate_by_text_type(model, tokenizer)   # the shipped validation text, by text type
    print(format_results(results))

Each type's documents are tokenized as in pretraining (``[BOS] + ids + [EOS]``), laid end to end and cut
into windows of ``seq_len`` predictions; every token is predicted exactly once (the last window is shorter).
Targets that are BOS are skipped: after an EOS the next BOS is certain and is not part of any text.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .corpus import CorpusError, documents_by_language, documents_by_text_type
from .data import IGNORE_INDEX
from .model import MiniMind
from .tokenizer import BOS_ID, EOS_ID


@dataclass
class LanguageEval:
    loss: float  # mean negative log-likelihood per predicted token (nats)
    bits_per_byte: float  # total negative log-likelihood in bits / UTF-8 bytes of the text
    tokens: int  # predicted tokens (EOS included, BOS not)
    bytes: int  # UTF-8 bytes of the documents evaluated
    documents: int

    def to_dict(self) -> dict:
        return asdict(self)


def _take_documents(docs: Sequence[str], max_tokens: int | None, tokenizer: Tokenizer) -> tuple[list[list[int]], int]:
    """Encode documents in order until ``max_tokens`` is reached; returns (token lists, their text's bytes)."""
    encoded, n_bytes, n_tokens = [], 0, 0
    for doc in docs:
        if not doc.strip():
            continue
        ids = [BOS_ID, *tokenizer.encode(doc, add_special_tokens=False).ids, EOS_ID]
        encoded.append(ids)
        n_bytes += len(doc.encode("utf-8"))
        n_tokens += len(ids)
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    return encoded, n_bytes


@torch.no_grad()
def evaluate_documents(
    model: MiniMind,
    tokenizer: Tokenizer,
    docs: Sequence[str],
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> LanguageEval:
    """Loss and bits per byte of ``model`` on ``docs`` (the first ``max_tokens`` tokens' worth of them)."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be at least 1, got {seq_len} and {batch_size}")
    seq_len = min(seq_len, model.config.max_position_embeddings)
    encoded, n_bytes = _take_documents(docs, max_tokens, tokenizer)
    if not encoded:
        raise CorpusError("no non-blank document to evaluate on")
    flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64)
    targets_all = flat[1:].copy()
    targets_all[targets_all == BOS_ID] = IGNORE_INDEX
    inputs_all = flat[:-1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    n = len(inputs_all)
    full = list(range(0, n - seq_len + 1, seq_len))  # windows of exactly seq_len predictions
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    tail = len(full) * seq_len
    if tail < n:
        batches.append([tail])  # the shorter last window, alone (a batch needs one length)
    try:
        for starts in batches:
            length = min(seq_len, n - starts[0])
            x = torch.from_numpy(np.stack([inputs_all[s : s + length] for s in starts])).to(device)
            y = torch.from_numpy(np.stack([targets_all[s : s + length] for s in starts])).to(device)
            enabled = autocast_dtype is not None
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=enabled):
                logits = model(x).logits
            nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            total_nll += float(nll)
            total_tokens += int((y != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return LanguageEval(
        loss=total_nll / total_tokens,
        bits_per_byte=total_nll / math.log(2) / n_bytes,
        tokens=total_tokens,
        bytes=n_bytes,
        documents=len(encoded),
    )


def evaluate_by_text_type(
    model: MiniMind,
    tokenizer: Tokenizer,
    documents: dict[str, Sequence[str]] | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens_per_type: int | None = 20_000,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, LanguageEval]:
    """:func:`evaluate_documents` for each group of ``documents`` (name -> documents); ``None``: the shipped
    validation split by text type (``en-stories``, ``zh-verse``, ``zh-prose``)."""
    documents = documents if documents is not None else documents_by_text_type("valid")
    return {
        name: evaluate_documents(model, tokenizer, docs, seq_len, batch_size, max_tokens_per_type, autocast_dtype)
        for name, docs in documents.items()
    }


def evaluate_by_language(
    model: MiniMind,
    tokenizer: Tokenizer,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens_per_language: int | None = 20_000,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, LanguageEval]:
    """The shipped validation split grouped by language only (``en``, ``zh``: the verse, then the prose)."""
    return evaluate_by_text_type(model, tokenizer, documents_by_language("valid"), seq_len, batch_size,
                                 max_tokens_per_language, autocast_dtype)


def format_results(results: dict[str, LanguageEval]) -> str:
    """A small text table: text type (or language), validation loss, bits per byte, tokens and bytes evaluated."""
    width = max([len("text type"), *map(len, results)])
    lines = [f"{'text type':<{width}} {'val loss':>9} {'bits/byte':>10} {'tokens':>8} {'bytes':>9}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}} {r.loss:>9.3f} {r.bits_per_byte:>10.3f} {r.tokens:>8,} {r.bytes:>9,}")
    return "\n".join(lines)
