"""Validation loss and bits per byte by language, on worked examples."""
from __future__ import annotations

import math

import pytest
import torch

from minimind_edu.corpus import CorpusError
from minimind_edu.evaluate import evaluate_by_language, evaluate_by_text_type, evaluate_documents, format_results
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.tokenizer import get_default_tokenizer

DOCS = ["Once upon a time there was a cat.", "The dog ran home.", "床前明月光，疑是地上霜。"]


def uniform_model() -> MiniMind:
    # A zero embedding (tied to the LM head) gives all-zero logits: every token has probability 1/6400.
    model = MiniMind(get_preset("tiny"))
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
    return model


@pytest.mark.parametrize("seq_len, batch_size", [(256, 8), (7, 3), (1, 1)])
def test_uniform_model_worked_example(seq_len, batch_size):
    tok = get_default_tokenizer()
    result = evaluate_documents(uniform_model(), tok, DOCS, seq_len=seq_len, batch_size=batch_size)
    # every document contributes its tokens plus its EOS; the BOS after an EOS is not scored
    expected_tokens = sum(len(tok.encode(d, add_special_tokens=False).ids) + 1 for d in DOCS)
    expected_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    assert result.tokens == expected_tokens and result.bytes == expected_bytes and result.documents == 3
    assert result.loss == pytest.approx(math.log(6400), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(expected_tokens * math.log2(6400) / expected_bytes, rel=1e-6)


def test_every_window_size_scores_each_token_once():
    # the loss changes with the window (context) but every token is scored exactly once at any window size
    torch.manual_seed(0)
    model = MiniMind(get_preset("tiny")).eval()
    tok = get_default_tokenizer()
    a, b = (evaluate_documents(model, tok, DOCS, seq_len=s, batch_size=2) for s in (5, 64))
    assert a.tokens == b.tokens


def test_max_tokens_takes_whole_documents_in_order():
    tok = get_default_tokenizer()
    result = evaluate_documents(uniform_model(), tok, DOCS, max_tokens=5)
    assert result.documents == 1 and result.bytes == len(DOCS[0])


def test_by_text_type_and_table():
    tok = get_default_tokenizer()
    results = evaluate_by_text_type(uniform_model(), tok, {"en-stories": DOCS[:2], "zh-verse": DOCS[2:]})
    assert set(results) == {"en-stories", "zh-verse"}
    table = format_results(results)
    assert table.splitlines()[0].split() == ["text", "type", "val", "loss", "bits/byte", "tokens", "bytes"]
    assert f"{results['zh-verse'].bits_per_byte:.3f}" in table


def test_shipped_validation_by_text_type_and_by_language():
    tok = get_default_tokenizer()
    by_type = evaluate_by_text_type(uniform_model(), tok, max_tokens_per_type=300)
    assert list(by_type) == ["en-stories", "zh-verse", "zh-prose"]
    by_language = evaluate_by_language(uniform_model(), tok, max_tokens_per_language=300)
    assert list(by_language) == ["en", "zh"]
    assert by_language["en"] == by_type["en-stories"]  # English is one type; Chinese starts with the verse
    assert by_language["zh"] == by_type["zh-verse"]


def test_empty_documents_are_an_error():
    with pytest.raises(CorpusError, match="no non-blank document"):
        evaluate_documents(uniform_model(), get_default_tokenizer(), ["", "  "])


def test_the_figures_in_the_module_docstring():
    # evaluate.py quotes these for the shipped validation split: tokens per character and gzip's bits per byte.
    import gzip

    from minimind_edu.corpus import documents_by_text_type

    tok = get_default_tokenizer()
    docs = documents_by_text_type("valid")
    per_char = {kind: sum(len(tok.encode(d, add_special_tokens=False).ids) for d in texts) / sum(map(len, texts))
                for kind, texts in docs.items()}
    assert {kind: round(v, 2) for kind, v in per_char.items()} == {"en-stories": 0.26, "zh-verse": 1.03,
                                                                   "zh-prose": 0.70}
    texts = {kind: "\n".join(docs[kind]).encode("utf-8") for kind in docs}
    gzip_bits = {kind: round(len(gzip.compress(b, 9)) * 8 / len(b), 1) for kind, b in texts.items()}
    assert gzip_bits == {"en-stories": 2.4, "zh-verse": 3.9, "zh-prose": 3.1}
