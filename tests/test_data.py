"""Data pipeline: token files, caching, packed and padded batches, order, splits, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from minimind_edu.corpus import CorpusError
from minimind_edu.data import (
    PackedBatches,
    PaddedBatches,
    TokenData,
    load_splits,
    make_batches,
    padding_waste,
    tokenize_documents,
    tokenize_files,
)
from minimind_edu.data import IGNORE_INDEX
from minimind_edu.tokenizer import BOS_ID, EOS_ID, PAD_ID, default_tokenizer_dir, get_default_tokenizer

STORIES = [f"Once upon a time there was a cat number {i}. It liked fish and milk." for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return get_default_tokenizer()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch, tok):
    tok_dir = default_tokenizer_dir()  # resolve before the cache moves, so the tokenizer is not retrained
    monkeypatch.setenv("MINIMIND_EDU_CACHE", str(tmp_path / "cache"))
    return tok_dir


def toy(lengths: list[int]) -> TokenData:
    """Documents of the given lengths with distinct, recognisable tokens (doc i holds 100*i + position)."""
    docs = [np.arange(n) + 100 * (i + 1) for i, n in enumerate(lengths)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenData(np.concatenate(docs).astype(np.uint16), offsets)


def test_documents_become_bos_ids_eos(tok):
    data = tokenize_documents(["hello world", "  ", "a cat"], tok)
    assert data.n_docs == 2  # the blank document is dropped
    assert data.tokens.dtype == np.uint16  # vocab 6400 fits in 16 bits: half the bytes of int32
    for i, text in enumerate(["hello world", "a cat"]):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert data.doc(i).tolist() == [BOS_ID, *ids, EOS_ID]


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
    data = toy([5, 7, 9])  # 21 tokens; seq_len 4 -> windows start at 0, 4, 8, 12, 16 (5 windows)
    b = PackedBatches(data, batch_size=5, seq_len=4, seed=3)
    assert b.n_items == 5
    x, y = b.next()
    assert x.shape == y.shape == (5, 4) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    predicted = sorted(y.flatten().tolist())
    assert predicted == sorted(data.flat()[1:21].tolist())


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
    assert r0.state_dict() == r1.state_dict() == one.state_dict()


def test_padded_rows_worked_example():
    data = toy([3, 6])  # doc0 = 100 101 102, doc1 = 200..205
    b = PaddedBatches(data, batch_size=2, seq_len=4)
    x, y = b._make(np.array([0, 1]))
    assert x.tolist() == [[100, 101, 102, PAD_ID], [200, 201, 202, 203]]
    assert y.tolist() == [[101, 102, IGNORE_INDEX, IGNORE_INDEX], [201, 202, 203, 204]]  # doc1 cut at 5 tokens


def test_padding_waste_worked_example():
    w = padding_waste(toy([3, 6]), seq_len=4)
    # Row 0 gives 2 predictions, row 1 gives 4 (cut to 5 tokens): 6 useful of 8 computed positions.
    assert w["padding_fraction"] == pytest.approx(2 / 8)
    assert w["truncated_fraction"] == pytest.approx(1 / 9)
    assert w["compute_ratio"] == pytest.approx(8 / 6)


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


def test_empty_short_and_missing_corpora(tmp_path, tmp_cache, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="empty"):
        tokenize_files(empty, tmp_cache, progress=False)
    with pytest.raises(CorpusError, match="no such corpus file"):
        tokenize_files(tmp_path / "nope.jsonl", tmp_cache, progress=False)
    short = tokenize_documents(["hi"], tok, source="short.txt")
    with pytest.raises(CorpusError, match=r"short\.txt: the corpus has \d+ tokens, shorter than one training window"):
        make_batches(short, "packed", 2, 16)


def test_token_id_beyond_vocab():
    data = toy([5])
    data.check_vocab(6400)
    with pytest.raises(CorpusError, match=r"token id 104 .*\(vocab_size=50\)"):
        data.check_vocab(50)


def test_jsonl_is_streamed(tmp_path, tmp_cache, monkeypatch):
    """Tokenizing reads the JSONL through the line-by-line generator, never the whole file at once."""
    import minimind_edu.data as data_mod

    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES * 30))
    monkeypatch.setattr(data_mod, "_ENCODE_CHUNK", 64)
    monkeypatch.setattr(data_mod, "read_documents", lambda *a, **k: pytest.fail("JSONL must be streamed"))
    data = tokenize_files(corpus, tmp_cache, progress=False)
    assert data.n_docs == 1200


def test_parallel_tokenization_into_one_cache(tmp_path, tmp_cache):
    """DDP ranks tokenize the same corpus at the same time into one cache: all must succeed and agree."""
    import subprocess
    import sys

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
