"""Data pipeline: token files, caching, packed and padded batches, order, splits, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import minimind_edu.data as data_mod
from minimind_edu.corpus import CorpusError
from minimind_edu.data import (
    IGNORE_INDEX,
    PackedBatches,
    PaddedBatches,
    TokenData,
    load_splits,
    make_batches,
    padding_waste,
    tokenize_documents,
    tokenize_files,
)
from minimind_edu.tokenizer import PAD_ID, SPECIAL_TOKENS, default_tokenizer_dir, get_default_tokenizer

STORIES = [f"Once upon a time there was a cat number {i}. It liked fish and milk." for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return get_default_tokenizer()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch, tok):
    tok_dir = default_tokenizer_dir()  # resolve before the cache moves, so the tokenizer is not retrained
    monkeypatch.setenv("MINIMIND_EDU_CACHE", str(tmp_path / "cache"))
    return tok_dir


def word_tokenizer(words: list[str]) -> Tokenizer:
    """A word-level tokenizer with known ids: 0, 1, 2 the special tokens, then ``words`` from 3 on.

    Like a tokenizer saved by ``transformers``, it adds BOS and EOS on its own unless told not to, so a double
    BOS would show.
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos, eos = SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=[(bos, 1), (eos, 2)])
    return tok


def toy(lengths: list[int]) -> TokenData:
    """Documents of the given lengths with distinct, recognisable tokens (doc i holds 100*i + position)."""
    docs = [np.arange(n) + 100 * (i + 1) for i, n in enumerate(lengths)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenData(np.concatenate(docs).astype(np.uint16), offsets)


def test_documents_become_bos_ids_eos():
    words = word_tokenizer(["hello", "world", "a", "cat"])  # hello = 3, world = 4, a = 5, cat = 6
    data = tokenize_documents(["hello world", "  ", "a cat"], words)
    assert data.n_docs == 2  # the blank document is dropped
    assert data.tokens.tolist() == [1, 3, 4, 2, 1, 5, 6, 2]  # BOS (1), the words, EOS (2): once each
    assert data.doc_offsets.tolist() == [0, 4, 8]
    assert data.doc(1).tolist() == [1, 5, 6, 2]
    assert data.tokens.dtype == np.uint16  # a vocabulary of up to 65,536 ids fits 16 bits: half of int32's bytes


def test_token_dtype_grows_with_the_vocabulary(tok):
    assert tokenize_documents(["hello"], tok).tokens.dtype == np.uint16  # the course tokenizer: 6400 tokens
    big = word_tokenizer([f"w{i}" for i in range(70_000)])  # 70,003 ids: beyond 16 bits
    data = tokenize_documents(["w0 w69999"], big)
    assert data.tokens.dtype == np.uint32
    assert data.tokens.tolist() == [1, 3, 70_002, 2]


def test_token_file_is_cached_and_memory_mapped(tmp_path, tmp_cache, tok):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
    first = tokenize_files(corpus, tmp_cache, progress=False)
    assert isinstance(first.tokens, np.memmap)
    expected = tokenize_documents(STORIES, tok)
    assert first.flat().tolist() == expected.flat().tolist()
    assert first.doc_offsets.tolist() == expected.doc_offsets.tolist()
    files = sorted((tmp_path / "cache" / "tokens").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    second = tokenize_files(corpus, tmp_cache, progress=False)  # served from the cache: nothing rewritten
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache" / "tokens").iterdir())] == stamps
    assert second.flat().tolist() == first.flat().tolist()
    corpus.write_text(json.dumps({"text": "changed"}) + "\n")  # new content -> new key -> re-tokenized
    assert tokenize_files(corpus, tmp_cache, progress=False).n_docs == 1


def test_packed_windows_predict_every_token_once_per_epoch():
    # 21 tokens: 100..104, 200..206, 300..308. Windows of seq_len + 1 = 5 tokens start every 4 tokens
    # (at 0, 4, 8, 12, 16), so consecutive windows share one token: (21 - 1) // 4 = 5 windows.
    data = toy([5, 7, 9])
    b = PackedBatches(data, batch_size=5, seq_len=4, seed=3)
    assert b.n_items == 5
    x, y = b.next()  # one batch of 5 is the whole epoch, in a shuffled order
    assert x.dtype == y.dtype == torch.long
    assert sorted(zip(x.tolist(), y.tolist())) == [
        ([100, 101, 102, 103], [101, 102, 103, 104]),
        ([104, 200, 201, 202], [200, 201, 202, 203]),
        ([203, 204, 205, 206], [204, 205, 206, 300]),
        ([300, 301, 302, 303], [301, 302, 303, 304]),
        ([304, 305, 306, 307], [305, 306, 307, 308]),
    ]  # every token but the first is a target exactly once


def test_order_is_a_function_of_seed_and_position():
    data = toy([50, 50, 50])
    a = PackedBatches(data, 2, 8, seed=1)
    first = [a.next()[0] for _ in range(5)]
    b = PackedBatches(data, 2, 8, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(first, [b.next()[0] for _ in range(5)]))
    c = PackedBatches(data, 2, 8, seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(first, [c.next()[0] for _ in range(5)]))
    # Resume: the position is the state; the next batch after loading is the next batch, not a repeat.
    d = PackedBatches(data, 2, 8, seed=1)
    for _ in range(3):
        d.next()
    state = d.state_dict()
    assert state == {"consumed": 6, "seed": 1}
    e = PackedBatches(data, 2, 8, seed=1)
    e.load_state_dict(state)
    assert torch.equal(e.next()[0], first[3]) and torch.equal(e.next()[0], first[4])
    with pytest.raises(ValueError, match="seed"):
        PackedBatches(data, 2, 8, seed=9).load_state_dict(state)


def test_epochs_are_full_permutations():
    data = toy([41])  # 10 windows of 4
    b = PackedBatches(data, 5, 4, seed=0)
    seen = [b.next_indices().tolist() for _ in range(4)]
    assert sorted(seen[0] + seen[1]) == list(range(10))
    assert sorted(seen[2] + seen[3]) == list(range(10))
    assert seen[0] + seen[1] != seen[2] + seen[3]  # a new shuffle each epoch
    assert b.epoch == 2.0


def test_eval_batches_are_fixed_and_spread_out():
    b = PackedBatches(toy([41]), 2, 4, seed=5)  # 10 windows
    first = b.eval_batches(2)
    b.next()  # training does not move them
    again = b.eval_batches(2)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, again))
    starts = [int(x[0]) - 100 for batch in first for x in batch[0]]
    assert starts == [0, 8, 20, 28]  # windows 0, 2, 5, 7 of 10: evenly spread
    assert len(b.eval_batches(7)) == 7  # more than the data holds: windows repeat


def test_ranks_split_the_global_batch_like_one_big_batch():
    data = toy([200])
    one = PackedBatches(data, 6, 8, seed=4)
    r0, r1 = (PackedBatches(data, 3, 8, seed=4, rank=r, world_size=2) for r in (0, 1))
    for _ in range(4):
        big = one.next()[0]
        assert torch.equal(torch.cat([r0.next()[0], r1.next()[0]]), big)
    # every rank counts the whole global batch: 4 steps x 6 windows
    assert r0.state_dict() == r1.state_dict() == one.state_dict() == {"consumed": 24, "seed": 4}


def test_padded_rows_worked_example():
    data = toy([3, 6])  # doc0 = 100 101 102, doc1 = 200..205
    b = PaddedBatches(data, batch_size=2, seq_len=4)
    x, y = b._make(np.array([0, 1]))
    assert x.tolist() == [[100, 101, 102, PAD_ID], [200, 201, 202, 203]]
    assert y.tolist() == [[101, 102, IGNORE_INDEX, IGNORE_INDEX], [201, 202, 203, 204]]  # doc1 cut at 5 tokens


def test_padding_waste_worked_example():
    w = padding_waste(toy([3, 6]), seq_len=4)
    # Row 0 gives 2 predictions, row 1 gives 4 (cut to 5 tokens): 6 useful of 2 x 4 = 8 computed positions.
    assert w["padding_fraction"] == pytest.approx(0.25)  # 2 of 8
    assert w["truncated_fraction"] == pytest.approx(0.1111, abs=1e-4)  # 1 of the 9 tokens is cut off
    assert w["compute_ratio"] == pytest.approx(1.3333, abs=1e-4)  # 8 positions for 6 predictions
    assert (w["seq_len"], w["n_docs"], w["mean_doc_tokens"]) == (4, 2, 4.5)


def test_padding_waste_on_the_shipped_corpus():
    train, _ = load_splits(progress=False)
    w = padding_waste(train, seq_len=256)
    # Short poems and stories in 256-token rows: a large share of the compute is padding.
    assert 0.2 < w["padding_fraction"] < 0.95
    assert w["compute_ratio"] > 1.2


def test_default_split_never_leaks():
    train, valid = load_splits(progress=False)
    train_docs = {train.doc(i).tobytes() for i in range(train.n_docs)}
    assert not any(valid.doc(i).tobytes() in train_docs for i in range(valid.n_docs))


def test_held_out_range_for_user_data(tmp_path, tmp_cache):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n\n".join(STORIES))
    train, valid = load_splits(corpus, tokenizer_dir=tmp_cache, valid_fraction=0.1, progress=False)
    assert (train.n_docs, valid.n_docs) == (36, 4)
    assert train.doc_offsets[-1] == valid.doc_offsets[0]  # adjacent ranges of one file: disjoint by construction
    b = PackedBatches(train, 4, 8)
    seen = set()
    for _ in range(3 * b.n_items // 4):
        seen.update(b.next_indices().tolist())
    # No training window reaches into the validation range.
    assert max(seen) * 8 + 9 <= train.n_tokens


def test_bad_jsonl_lines_name_file_and_line(tmp_path, tmp_cache):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not valid JSON"):
        tokenize_files(bad, tmp_cache, progress=False)
    bad.write_text('{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(CorpusError, match=r'bad\.jsonl:2: missing the "text" field'):
        tokenize_files(bad, tmp_cache, progress=False)
    assert not list((tmp_path / "cache" / "tokens").glob("*.tmp"))  # no half-written cache left


def test_empty_short_and_missing_corpora(tmp_path, tmp_cache):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match=r"empty\.jsonl: the corpus is empty"):
        tokenize_files(empty, tmp_cache, progress=False)
    with pytest.raises(CorpusError, match=r"nope\.jsonl: no such corpus file"):
        tokenize_files(tmp_path / "nope.jsonl", tmp_cache, progress=False)
    with pytest.raises(CorpusError, match="the corpus is empty"):
        tokenize_documents(["", "  \n"], word_tokenizer([]))
    short = tokenize_documents(["hello"], word_tokenizer(["hello"]), source="short.txt")  # BOS hello EOS
    with pytest.raises(CorpusError, match=r"short\.txt: the corpus has 3 tokens, shorter than one training window of "
                                          r"seq_len \+ 1 = 17 tokens"):
        make_batches(short, "packed", 2, 16)
    assert make_batches(short, "packed", 2, 2).n_items == 1  # 3 tokens make exactly one window of 2 + 1
    with pytest.raises(ValueError, match=r'batch kind must be "packed" or "padded", got \'sorted\''):
        make_batches(short, "sorted", 2, 2)


def test_token_id_beyond_vocab():
    data = toy([5])  # 100..104
    data.check_vocab(105)  # ids 0..104 fit 105 embedding rows
    with pytest.raises(CorpusError, match=r"token id 104 \(first bad token at position 4\) .*\(vocab_size=104\)"):
        data.check_vocab(104)
    with pytest.raises(CorpusError, match=r"token id 104 \(first bad token at position 0\) .*\(vocab_size=50\)"):
        data.check_vocab(50)


def test_jsonl_is_streamed(tmp_path, tmp_cache, monkeypatch):
    """Tokenizing reads the JSONL through the line-by-line generator, never the whole file at once."""
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES * 30))
    monkeypatch.setattr(data_mod, "_ENCODE_CHUNK", 64)
    monkeypatch.setattr(data_mod, "read_documents", lambda *a, **k: pytest.fail("JSONL must be streamed"))
    data = tokenize_files(corpus, tmp_cache, progress=False)
    assert data.n_docs == 1200


def test_parallel_tokenization_into_one_cache(tmp_path, tmp_cache):
    """DDP ranks tokenize the same corpus at the same time into one cache: all must succeed and agree."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES * 50))
    script = ("import sys; from minimind_edu.data import tokenize_files; "
              "d = tokenize_files(sys.argv[1], sys.argv[2], progress=False); print(d.n_docs, int(d.flat().sum()))")
    env = dict(os.environ, MINIMIND_EDU_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(corpus), str(tmp_cache)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    assert sorted(p.suffix for p in (tmp_path / "cache" / "tokens").iterdir()) == [".bin", ".json", ".npy"]
