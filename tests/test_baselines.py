"""The baselines a trained model's loss is read against, pinned with worked examples computed by hand."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from minimind_edu.baselines import (
    baselines_by_text_type,
    baselines_for,
    bits_per_byte,
    compressed_bits_per_byte,
    format_baselines,
    plot_baselines,
    scored_text,
    uniform_nats_per_token,
    unigram_counts,
    unigram_log_probs,
    unigram_nats_per_token,
)
from minimind_edu.corpus import CorpusError
from minimind_edu.evaluate import evaluate_documents
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.tokenizer import get_default_tokenizer

matplotlib.use("Agg")


def word_tokenizer() -> Tokenizer:
    # The course's three special ids (0 pad, 1 BOS, 2 EOS), then one id per word: "a" is 3, "b" is 4.
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "b": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_uniform_is_ln_v_exactly():
    assert uniform_nats_per_token(6400) == math.log(6400)
    assert uniform_nats_per_token(2) == math.log(2)  # a fair coin: 1 bit = ln 2 nats
    assert uniform_nats_per_token(1) == 0.0  # a single choice is no surprise
    with pytest.raises(ValueError, match="vocab_size"):
        uniform_nats_per_token(0)


def test_bits_per_byte_worked_example():
    # 3 tokens of ln 4 nats (2 bits) each = 6 bits, spread over 6 bytes: 1 bit per byte
    assert bits_per_byte(math.log(4), tokens=3, n_bytes=6) == pytest.approx(1.0)
    # the same loss over fewer bytes (a tokenizer that packs fewer bytes per token) costs more per byte
    assert bits_per_byte(math.log(4), tokens=3, n_bytes=3) == pytest.approx(2.0)
    assert bits_per_byte(1.0, 10, 20) == pytest.approx(10 / (20 * math.log(2)))
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 3, 0)


def test_unigram_on_a_three_token_corpus():
    # training tokens 0, 1, 1 over a vocabulary of 3: counts (1, 2, 0); add-one: (2, 3, 1) / 6
    counts = unigram_counts([0, 1, 1], vocab_size=3, skip=())
    assert counts.tolist() == [1, 2, 0]
    log_probs = unigram_log_probs(counts)
    np.testing.assert_allclose(np.exp(log_probs), [2 / 6, 3 / 6, 1 / 6])
    # scoring 1 then 2: -(ln 3/6 + ln 1/6) / 2 = (ln 2 + ln 6) / 2 = ln(12) / 2
    assert unigram_nats_per_token(log_probs, [1, 2]) == pytest.approx(math.log(12) / 2)
    # without smoothing, the plain frequencies: an unseen token would cost infinitely much
    np.testing.assert_allclose(np.exp(unigram_log_probs(counts, smoothing=0)), [1 / 3, 2 / 3, 0])


def test_unigram_counts_skip_bos_and_check_ids():
    assert unigram_counts([1, 3, 3, 2, 1, 4, 2], vocab_size=5).tolist() == [0, 0, 2, 2, 1]  # BOS (1) not counted
    with pytest.raises(ValueError, match="token ids"):
        unigram_counts([0, 5], vocab_size=5)
    with pytest.raises(ValueError, match="smoothing"):
        unigram_log_probs(np.zeros(3), smoothing=0)
    with pytest.raises(ValueError, match="no target"):
        unigram_nats_per_token(np.zeros(3), [])


def test_compressor_overhead_worked_example():
    # One byte "a": gzip writes a 10-byte header, a 3-byte deflate block and an 8-byte trailer (CRC, size):
    # 21 bytes = 168 bits for 1 byte. zlib: 2 + 3 + 4 (Adler-32) = 9 bytes = 72 bits. Tiny inputs pay the frame.
    assert compressed_bits_per_byte(b"a", "gzip") == 168.0
    assert compressed_bits_per_byte(b"a", "zlib") == 72.0
    # a long repetition costs almost nothing per byte; random bytes cannot be compressed below 8 bits
    assert compressed_bits_per_byte(b"ab" * 50_000, "gzip") < 0.1
    noise = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    assert all(compressed_bits_per_byte(noise, m) > 8.0 for m in ("gzip", "zlib", "bz2", "lzma"))
    with pytest.raises(ValueError, match="method"):
        compressed_bits_per_byte(b"abc", "zip")
    with pytest.raises(ValueError, match="nothing"):
        compressed_bits_per_byte(b"")


def test_baselines_worked_example_with_a_word_tokenizer():
    tok = word_tokenizer()
    # training stream [BOS a a b EOS]: BOS skipped, counts (pad 0, BOS 0, EOS 1, a 2, b 1); add-one over the
    # 5 ids: (1, 1, 2, 3, 2) / 9
    counts = unigram_counts([1, 3, 3, 4, 2], vocab_size=5)
    text = scored_text(tok, ["a b a", "   "])  # the blank document is skipped, as the evaluation skips it
    assert text.targets.tolist() == [3, 4, 3, 2] and text.n_bytes == 5 and text.documents == 1
    b = baselines_for(text, unigram_log_probs(counts))
    # targets a, b, a, EOS: -(ln 3/9 + ln 2/9 + ln 3/9 + ln 2/9) / 4 = (ln 3 + ln 4.5) / 2 = ln(13.5) / 2
    assert b.unigram == pytest.approx(math.log(13.5) / 2)
    assert b.unigram_bits_per_byte == pytest.approx(4 * math.log(13.5) / 2 / (5 * math.log(2)))
    assert b.uniform == math.log(5) and b.uniform_bits_per_byte == pytest.approx(4 * math.log2(5) / 5)
    assert b.compressor == "gzip" and b.compressor_bits_per_byte == compressed_bits_per_byte(b"a b a")
    assert (b.tokens, b.bytes) == (4, 5)
    with pytest.raises(CorpusError, match="no non-blank"):
        scored_text(tok, ["", " "])


def test_the_same_text_as_the_evaluation():
    # A zero embedding (tied to the LM head) gives all-zero logits: the model IS the uniform baseline, on the
    # same tokens and bytes, so both bits-per-byte figures agree.
    model = MiniMind(get_preset("tiny"))
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
    tok = get_default_tokenizer()
    docs = ["Once upon a time there was a cat.", "", "The dog ran home.", "床前明月光，疑是地上霜。"]
    for max_tokens in (None, 5):
        evaluated = evaluate_documents(model, tok, docs, max_tokens=max_tokens)
        b = baselines_for(scored_text(tok, docs, max_tokens), unigram_log_probs(np.zeros(6400)))
        assert (b.tokens, b.bytes, b.documents) == (evaluated.tokens, evaluated.bytes, evaluated.documents)
        assert b.uniform_bits_per_byte == pytest.approx(evaluated.bits_per_byte, rel=1e-6)
        assert b.unigram == pytest.approx(math.log(6400))  # nothing counted + add-one: uniform again


def test_by_text_type_table_and_plot():
    tok = word_tokenizer()
    counts = unigram_counts([1, 3, 3, 4, 2], vocab_size=5)
    results = baselines_by_text_type(tok, counts, {"x": ["a b a"], "y": ["b b", "a"]}, max_tokens_per_type=3,
                                     compressor="lzma")
    assert list(results) == ["x", "y"] and results["y"].documents == 1  # [BOS b b EOS] reaches 3 tokens
    table = format_baselines(results)
    assert "lzma" in table.splitlines()[1] and f"{results['y'].unigram:.3f}" in table
    trained = {"x": evaluate_like(0.5, 1.25), "y": evaluate_like(0.25, 0.75)}
    with_model = format_baselines(results, trained)
    assert "model" in with_model and "1.250" in with_model
    ax = plot_baselines(results, trained)
    assert len(ax.patches) == 4 * 2  # four bars (uniform, unigram, lzma, model) per text type


def evaluate_like(loss: float, bpb: float):
    from minimind_edu.evaluate import LanguageEval

    return LanguageEval(loss=loss, bits_per_byte=bpb, tokens=1, bytes=1, documents=1)
