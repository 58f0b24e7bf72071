"""Baselines to read a trained model's validation loss against: what a model that learned nothing, or very little,
would score on the same validation text.

A loss of 3.5 nats per token means little on its own. Three references give it a scale, each scored on exactly
the tokens and bytes that :func:`minimind_edu.evaluate.evaluate_by_text_type` scores:

* **uniform**: every one of the ``V`` tokens equally likely, ``ln V`` nats per token (an untrained model sits
  close to it);
* **unigram**: each token as likely as it is frequent in the training text, context ignored (counts with
  add-one smoothing, so that a token never seen in training still has a probability);
* **a compressor** (gzip at level 9 by default; zlib, bz2 or lzma on request), which needs no tokenizer: its
  compressed size in bits divided by the text's UTF-8 bytes is a bits-per-byte figure like the model's.

Loss in nats per token depends on how the tokenizer cuts the text; bits per byte divides the same total
surprise by the text's bytes instead, ``nats/token x tokens / (bytes x ln 2)`` (:func:`bits_per_byte`), so a
model, a baseline and gzip can be compared.

    counts = unigram_counts(train_data.flat(), tokenizer.get_vocab_size())
    print(format_baselines(baselines_by_text_type(tokenizer, counts), trained=results_by_text_type))
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import math
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .corpus import CorpusError, documents_by_text_type
from .evaluate import LanguageEval
from .i18n import check_language, plot_text
from .tokenizer import BOS_ID, EOS_ID

COMPRESSORS = ("gzip", "zlib", "bz2", "lzma")


def bits_per_byte(nats_per_token: float, tokens: int, n_bytes: int) -> float:
    """The same total surprise per UTF-8 byte, in bits: ``nats_per_token * tokens / (n_bytes * ln 2)``."""
    if tokens < 0 or n_bytes < 1:
        raise ValueError(f"need tokens >= 0 and n_bytes >= 1, got {tokens} and {n_bytes}")
    return nats_per_token * tokens / (n_bytes * math.log(2))


def uniform_nats_per_token(vocab_size: int) -> float:
    """Loss of the uniform guess over ``vocab_size`` tokens: ``-ln(1 / V) = ln V`` nats, whatever the text."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
    return math.log(vocab_size)


def unigram_counts(tokens: np.ndarray | Sequence[int], vocab_size: int,
                   skip: Collection[int] = (BOS_ID,)) -> np.ndarray:
    """How often each id occurs in ``tokens`` (length ``vocab_size``), ids in ``skip`` counted as 0.

    BOS is skipped by default: the evaluation never scores it (it is certain after an EOS and is not text).
    """
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.int64)
    counts[list(skip)] = 0
    return counts


def unigram_log_probs(counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Natural-log probabilities ``ln((count + smoothing) / (total + smoothing * V))`` (add-one by default)."""
    counts = np.asarray(counts, dtype=np.float64)
    if smoothing < 0 or (smoothing == 0 and counts.sum() == 0):
        raise ValueError(f"smoothing must be >= 0 (and > 0 when nothing was counted), got {smoothing}")
    smoothed = counts + smoothing
    with np.errstate(divide="ignore"):  # smoothing 0: an id never counted gets ln 0 = -inf
        return np.log(smoothed) - np.log(smoothed.sum())


def unigram_nats_per_token(log_probs: np.ndarray, targets: np.ndarray | Sequence[int]) -> float:
    """Mean negative log-likelihood (nats) of ``targets`` under the unigram ``log_probs``."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size == 0:
        raise ValueError("no target to score")
    return float(-log_probs[targets].mean())


def compressed_bits_per_byte(data: bytes, method: str = "gzip") -> float:
    """Compressed size in bits per input byte, at each compressor's strongest level (gzip/zlib/bz2 9, lzma 9e)."""
    if not data:
        raise ValueError("nothing to compress")
    if method == "gzip":
        packed = gzip.compress(data, compresslevel=9, mtime=0)  # mtime=0: the same bytes on every run
    elif method == "zlib":
        packed = zlib.compress(data, 9)
    elif method == "bz2":
        packed = bz2.compress(data, 9)
    elif method == "lzma":
        packed = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    else:
        raise ValueError(f"method must be one of {', '.join(COMPRESSORS)}, got {method!r}")
    return len(packed) * 8 / len(data)


@dataclass
class ScoredText:
    """The validation text exactly as the evaluation scores it."""

    targets: np.ndarray  # the token ids predicted, in order: each document's tokens and its EOS (BOS never)
    text: bytes  # the documents' UTF-8 bytes, joined by newlines (what a compressor is given)
    n_bytes: int  # UTF-8 bytes of the documents, without the newlines (the evaluation's denominator)
    documents: int


def scored_text(tokenizer: Tokenizer, docs: Sequence[str], max_tokens: int | None = None) -> ScoredText:
    """The documents the evaluation takes: non-blank ones in order, ``[BOS] + ids + [EOS]`` each, until
    ``max_tokens`` tokens (BOS included) are reached, as :func:`minimind_edu.evaluate.evaluate_documents`."""
    targets: list[int] = []
    texts: list[str] = []
    n_tokens = 0
    for doc in docs:
        if not doc.strip():
            continue
        ids = tokenizer.encode(doc, add_special_tokens=False).ids
        targets += [*ids, EOS_ID]
        texts.append(doc)
        n_tokens += len(ids) + 2
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    if not texts:
        raise CorpusError("no non-blank document to evaluate on")
    return ScoredText(np.array(targets, dtype=np.int64), "\n".join(texts).encode("utf-8"),
                      sum(len(t.encode("utf-8")) for t in texts), len(texts))


@dataclass
class Baselines:
    uniform: float  # nats per token
    uniform_bits_per_byte: float
    unigram: float  # nats per token
    unigram_bits_per_byte: float
    compressor_bits_per_byte: float
    compressor: str  # which compressor: gzip, zlib, bz2 or lzma
    tokens: int  # predicted tokens (as LanguageEval.tokens)
    bytes: int  # UTF-8 bytes of the documents (as LanguageEval.bytes)
    documents: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baselines_for(text: ScoredText, log_probs: np.ndarray, compressor: str = "gzip") -> Baselines:
    """Uniform, unigram (``log_probs``) and compressor scores of one :class:`ScoredText`."""
    uniform = uniform_nats_per_token(len(log_probs))
    unigram = unigram_nats_per_token(log_probs, text.targets)
    tokens = len(text.targets)
    return Baselines(
        uniform=uniform, uniform_bits_per_byte=bits_per_byte(uniform, tokens, text.n_bytes),
        unigram=unigram, unigram_bits_per_byte=bits_per_byte(unigram, tokens, text.n_bytes),
        compressor_bits_per_byte=compressed_bits_per_byte(text.text, compressor), compressor=compressor,
        tokens=tokens, bytes=text.n_bytes, documents=text.documents,
    )


def baselines_by_text_type(
    tokenizer: Tokenizer,
    train_counts: np.ndarray,
    documents: Mapping[str, Sequence[str]] | None = None,
    max_tokens_per_type: int | None = 20_000,
    smoothing: float = 1.0,
    compressor: str = "gzip",
) -> dict[str, Baselines]:
    """:func:`baselines_for` each group of ``documents`` (``None``: the shipped validation split by text type),
    on the same tokens as :func:`minimind_edu.evaluate.evaluate_by_text_type` with the same ``max_tokens``.

    ``train_counts`` (:func:`unigram_counts` of the training tokens) gives the unigram model; its length is
    the vocabulary size.
    """
    documents = documents if documents is not None else documents_by_text_type("valid")
    log_probs = unigram_log_probs(train_counts, smoothing)
    return {name: baselines_for(scored_text(tokenizer, docs, max_tokens_per_type), log_probs, compressor)
            for name, docs in documents.items()}


def format_baselines(baselines: Mapping[str, Baselines], trained: Mapping[str, LanguageEval] | None = None) -> str:
    """A text table per text type: nats per token and bits per byte of each baseline (and of a trained model)."""
    first = next(iter(baselines.values()))
    columns = ["uniform", "unigram"] + (["model"] if trained else [])
    width = max([len("text type"), *map(len, baselines)])
    head = "".join(f"{c:>9}" for c in columns)
    lines = [f"{'':<{width}} {'nats per token':^{9 * len(columns)}} | {'bits per byte':^{9 * (len(columns) + 1)}}",
             f"{'text type':<{width}} {head} | {head}{first.compressor:>9}"]
    for name, b in baselines.items():
        nats = [b.uniform, b.unigram] + ([trained[name].loss] if trained else [])
        bpb = [b.uniform_bits_per_byte, b.unigram_bits_per_byte] + ([trained[name].bits_per_byte] if trained else [])
        lines.append(f"{name:<{width}} " + "".join(f"{v:>9.3f}" for v in nats) + " | "
                     + "".join(f"{v:>9.3f}" for v in [*bpb, b.compressor_bits_per_byte]))
    return "\n".join(line.rstrip() for line in lines)


def plot_baselines(baselines: Mapping[str, Baselines], trained: Mapping[str, LanguageEval] | None = None,
                   ax: Any = None, lang: str = "en") -> Any:
    """Bars of bits per byte per text type: uniform, unigram, the compressor (and a trained model); returns the
    matplotlib axes. ``lang="zh"``: labels in Chinese where a CJK font can draw them (else English)."""
    check_language(lang)
    plot_text(lang, "", "")  # before anything is drawn: a CJK font becomes matplotlib's fallback where there is one
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    first = next(iter(baselines.values()))
    bars = {plot_text(lang, "uniform", "均匀猜测"): [b.uniform_bits_per_byte for b in baselines.values()],
            plot_text(lang, "unigram", "一元模型（unigram）"): [b.unigram_bits_per_byte for b in baselines.values()],
            first.compressor: [b.compressor_bits_per_byte for b in baselines.values()]}
    if trained:
        bars[plot_text(lang, "trained model", "训练后的模型")] = [trained[name].bits_per_byte for name in baselines]
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        ax.bar([x + (i - (len(bars) - 1) / 2) * width for x in range(len(baselines))], values, width, label=label)
    ax.set(xticks=range(len(baselines)), xticklabels=list(baselines),
           ylabel=plot_text(lang, "bits per byte (lower is better)", "每字节比特数（越低越好）"),
           title=plot_text(lang, "validation text: baselines" + (" and the trained model" if trained else ""),
                           "验证文本上的基线" + ("与训练后的模型" if trained else "")))
    ax.legend(fontsize=8)
    return ax
