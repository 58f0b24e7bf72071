"""The teaching BPE: worked examples, lossless round trips, and agreement with Hugging Face ``tokenizers``."""
from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from minimind_edu import bpe
from minimind_edu.corpus import data_dir, documents_by_language
from minimind_edu.tokenizer import SPECIAL_TOKENS, get_default_tokenizer, load_tokenizer, train_tokenizer

PARAGRAPH = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. "
    "One day, she saw a big, red ball in the park. 床前明月光，疑是地上霜。举头望明月，低头思故乡。 "
    "Lily was happy 😀 and she played with the ball all day long. 明月 and the sunshine! 🎉🎉"
)


# --- worked examples -----------------------------------------------------------------------------------------
def test_count_pairs_and_merge_pair():
    assert bpe.count_pairs([97, 97, 97, 98]) == {(97, 97): 2, (97, 98): 1}  # "aaab": "aa" twice (overlapping)
    counts = Counter({(97, 97): 5})
    assert bpe.count_pairs([97, 97], counts, weight=3) == {(97, 97): 8}  # adds to the counts it is given
    assert bpe.merge_pair([97, 97, 97, 98], (97, 97), 256) == [256, 97, 98]  # left to right, no overlap
    assert bpe.merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]


def test_classic_aaabdaaabac():
    # Wikipedia's example, byte-level: 'a' = 97, 'b' = 98, 'c' = 99, 'd' = 100; merge n gets id 255 + n.
    tok = bpe.train("aaabdaaabac", vocab_size=300, split=False)
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (257, 98): 258}  # "aa", "aaa", "aaab"
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]  # stops: no pair occurs twice any more
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def test_vocab_size_limits_the_number_of_merges():
    tok = bpe.train("aaabdaaabac", vocab_size=257, split=False)
    assert tok.merges == {(97, 97): 256}
    assert tok.encode("aaabdaaabac") == [256, 97, 98, 100, 256, 97, 98, 97, 99]
    assert bpe.train("abc", vocab_size=256).merges == {}


def test_ties_go_to_the_pair_seen_first():
    assert list(bpe.train("xyab", vocab_size=257, split=False).merges) == []  # every pair once: nothing to merge
    assert list(bpe.train("abxyabxy", vocab_size=257, split=False).merges) == [(97, 98)]


def test_merges_do_not_cross_pretokenizer_chunks():
    tok = bpe.train(["the cat the cat the cat"], vocab_size=300)
    learned = {tok.vocab[i] for i in tok.merges.values()}
    assert b" cat" in learned and b"the" in learned
    assert not any(b"e c" in piece or b"t t" in piece for piece in learned)


def test_pretokenize_gpt2_split():
    # A space sticks to the word after it; of a run of whitespace, the last one goes with the next chunk
    # only if it is a space (" x"), otherwise it stands alone ("\n", "\n").
    assert bpe.pretokenize("Hello world's  x 123!\n\n床前 😀") == [
        "Hello", " world", "'s", " ", " x", " 123", "!", "\n", "\n", "床前", " 😀"]


def test_bytes_to_unicode_is_gpt2s_table():
    table = bpe.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a" and table[0] == "Ā"


def test_errors():
    with pytest.raises(ValueError, match="vocab_size=255 is too small"):
        bpe.train("abc", vocab_size=255)
    with pytest.raises(ValueError, match="empty"):
        bpe.train("", vocab_size=300)
    with pytest.raises(ValueError, match="byte-level BPE"):
        bpe.from_tokenizers(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))


def test_training_on_a_paragraph_compresses_it():
    tok = bpe.train(PARAGRAPH, vocab_size=286)
    assert len(tok.merges) == 30 and len(tok.vocab) == 286  # 256 byte tokens + 30 merges
    assert tok.decode(tok.encode(PARAGRAPH)) == PARAGRAPH
    assert len(tok.encode(PARAGRAPH)) < 0.7 * len(PARAGRAPH.encode("utf-8"))


def test_training_stops_when_no_pair_repeats():
    tok = bpe.train(PARAGRAPH, vocab_size=10_000)
    assert 30 < len(tok.merges) < 10_000 - 256
    counts = Counter()
    for chunk in bpe.pretokenize(PARAGRAPH):
        bpe.count_pairs(tok.encode(chunk), counts)
    assert max(counts.values()) == 1


# --- round trip: any Unicode text survives encode -> decode ----------------------------------------------------
TRAINED = bpe.train(PARAGRAPH, vocab_size=400)


@settings(max_examples=200, deadline=None)
@given(st.text() | st.text(alphabet="明月光床前 😀🎉abc\n\t", max_size=60))
def test_round_trip_any_text(text):
    assert TRAINED.decode(TRAINED.encode(text)) == text
    assert "".join(bpe.pretokenize(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_without_pretokenizer(text):
    raw = bpe.BPE(TRAINED.merges, TRAINED.vocab, split=False)
    assert raw.decode(raw.encode(text)) == text


def test_decode_of_a_partial_character_is_replaced_not_an_error():
    bytes_only = bpe.train("abc", vocab_size=256)
    ids = bytes_only.encode("😀")
    assert ids == list("😀".encode()) == [0xF0, 0x9F, 0x98, 0x80]
    assert bytes_only.decode(ids[:2]) == "\ufffd"


# --- agreement with tokenizers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_text() -> dict[str, str]:
    by_language = documents_by_language("valid")
    return {"en": "\n\n".join(by_language["en"][:40]), "zh": "\n\n".join(by_language["zh"][:40])}


def reference_tokenizers() -> dict[str, Tokenizer]:
    return {
        "course": get_default_tokenizer(),
        "minimind": load_tokenizer(data_dir() / "minimind"),
        "minimind2": load_tokenizer(data_dir() / "minimind" / "minimind2"),
    }


@pytest.mark.parametrize("name", ["course", "minimind", "minimind2"])
def test_same_ids_as_tokenizers(name, valid_text):
    hf = reference_tokenizers()[name]
    teaching = bpe.from_tokenizers(hf)
    for text in valid_text.values():
        ids = teaching.encode(text)
        assert ids == hf.encode(text).ids
        assert teaching.decode(ids) == text == hf.decode(ids)


def test_same_ids_as_a_freshly_trained_small_tokenizer():
    hf = train_tokenizer([PARAGRAPH] * 3, vocab_size=400)
    teaching = bpe.from_tokenizers(hf)
    assert len(teaching.merges) == 141  # 400 ids - 256 bytes - 3 special tokens
    assert len(teaching.vocab) == 400
    assert teaching.encode(PARAGRAPH) == hf.encode(PARAGRAPH).ids
    # Special tokens keep their ids and their text.
    assert [teaching.vocab[i] for i in range(3)] == [t.encode() for t in SPECIAL_TOKENS]


@functools.cache
def course_pair() -> tuple[Tokenizer, bpe.BPE]:
    return get_default_tokenizer(), bpe.from_tokenizers(get_default_tokenizer())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("the cat 猫 sat on mat. 床前明月光，\n\t 0123!?'s😀🎉") + ["é", "ß"]),
               max_size=80))
def test_same_ids_property(text):
    hf, teaching = course_pair()
    assume(not any(t in text for t in SPECIAL_TOKENS))
    assert teaching.encode(text) == hf.encode(text).ids


def test_without_the_regex_package_ids_still_agree(monkeypatch, valid_text):
    monkeypatch.setattr(bpe, "_SPLITTER", None)  # as on an install without `regex`
    hf, teaching = course_pair()
    for text in valid_text.values():
        assert teaching.encode(text) == hf.encode(text).ids


def test_regex_split_matches_tokenizers_split(valid_text):
    # Where the `regex` package is missing the teaching BPE uses tokenizers' split; both must agree.
    for text in [*valid_text.values(), PARAGRAPH, "a  b\n \n\tc   \r\n"]:
        assert bpe.pretokenize(text) == bpe.pretokenize_with_tokenizers(text)


# --- the notebook's hand-written loop is the same algorithm -------------------------------------------------------
def hand_bpe_from_notebook(text: str) -> dict:
    """Run the notebook cells tagged "hand-bpe" (get_stats, merge and the merge loop) on ``text``."""
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "01_tokenizer.ipynb"
    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
             if "hand-bpe" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 2, "notebooks/01_tokenizer.ipynb: expected two cells tagged hand-bpe"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    namespace["ids"] = list(text.encode("utf-8"))  # replace the toy string before the merge loop runs
    exec("".join(cells[1]["source"]), namespace)
    return namespace


@pytest.mark.parametrize("text", ["aaabdaaabac", "abababcabcabcd", "床前明月光，明月明月光光"])
def test_notebook_hand_bpe_matches_library(text, capsys):
    namespace = hand_bpe_from_notebook(text)
    library = bpe.train(text, vocab_size=256 + 10, split=False)
    assert namespace["hand_merges"] == library.merges
    assert namespace["ids"] == library.encode(text)
    assert namespace["merge"]([1, 2, 1, 2, 3], (1, 2), 7) == [7, 7, 3]
