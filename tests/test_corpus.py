"""Reading corpora as documents: each format, separators, the cut-off story, and errors that say where."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minimind_edu.corpus import (
    ENDOFTEXT,
    TEXT_TYPES,
    CorpusError,
    data_dir,
    default_corpus_files,
    default_documents,
    documents_by_language,
    documents_by_text_type,
    iter_jsonl_documents,
    read_documents,
    split_documents,
)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# --- separators -------------------------------------------------------------------------------------------
def test_endoftext_separator_with_trailing_separator_keeps_every_story():
    assert split_documents("Once.<|endoftext|>\nTwo!\n<|endoftext|>") == ["Once.", "Two!"]


def test_endoftext_cut_off_last_piece_is_dropped():
    # A file cut to a size limit ends in the middle of a story: that piece is not a document.
    assert split_documents("Once.<|endoftext|>Two!<|endoftext|>Three was cut o") == ["Once.", "Two!"]


def test_single_story_without_separator_is_kept():
    assert split_documents("Just one story.") == ["Just one story."]


def test_blank_lines_separate_poems_and_lines_stay_together():
    text = "《静夜思》李白\n床前明月光\n疑是地上霜\n\n  \n《春晓》孟浩然\n春眠不觉晓\n\n\n"
    assert split_documents(text) == ["《静夜思》李白\n床前明月光\n疑是地上霜", "《春晓》孟浩然\n春眠不觉晓"]


def test_explicit_separator():
    assert split_documents("a|b||c", separator="|") == ["a", "b", "c"]


# --- files -------------------------------------------------------------------------------------------------
def test_plain_text_files(tmp_path):
    stories = write(tmp_path, "s.txt", f"One.{ENDOFTEXT}Two.{ENDOFTEXT}Thr")
    poems = write(tmp_path, "p.txt", "山\n水\n\n风\n")
    assert read_documents(stories) == ["One.", "Two."]
    assert read_documents(poems) == ["山\n水", "风"]


def test_jsonl_documents(tmp_path):
    lines = [json.dumps({"text": "第一篇"}, ensure_ascii=False), "", json.dumps({"text": "second", "id": 7}),
             json.dumps({"text": "   "})]
    path = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    assert read_documents(path) == ["第一篇", "second"]
    assert list(iter_jsonl_documents(path)) == ["第一篇", "second"]


def test_shipped_minimind_jsonl_sample():
    docs = read_documents(data_dir() / "minimind" / "pretrain_data_example.jsonl")
    assert [len(d) for d in docs] == [227, 346]
    assert docs[0].startswith("LLM首先要学习的并非直接与人交流")
    assert docs[1].startswith("经过预训练，LLM此时已经掌握了大量知识")


def test_shipped_tinystories_drops_only_the_cut_off_story():
    path = data_dir() / "en" / "tinystories_train.txt"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("She had a box in her hands. She said it was")  # the file really is cut off
    docs = read_documents(path)
    assert text.count(ENDOFTEXT) == len(docs) == 2316  # every story that has its separator is kept
    assert docs[-1].startswith("Lila liked to jog with her dad.")
    assert docs[-1].endswith("She hoped to see the dolphin again.")
    last_piece = text.rsplit(ENDOFTEXT, 1)[1].strip()
    assert last_piece.startswith("Lily was very happy. Today was her birthday.") and last_piece not in docs


# --- errors ------------------------------------------------------------------------------------------------
def test_non_utf8_text_names_file_and_byte_offset(tmp_path):
    path = write(tmp_path, "latin1.txt", "café au lait".encode("latin-1"))  # é is 0xe9 at byte 3
    with pytest.raises(CorpusError, match=r"latin1\.txt: not UTF-8.*0xe9 at byte offset 3"):
        read_documents(path)


def test_non_utf8_jsonl_names_file_line_and_byte_offset(tmp_path):
    # The bad byte follows the 15 bytes of line 1 and the 13 of '{"text": "caf' on line 2: offset 28 in the file.
    path = write(tmp_path, "bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not UTF-8.*0xe9 at byte offset 28"):
        read_documents(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", r"bad\.jsonl:2: not valid JSON"),
     ('{"content": "x"}', r'bad\.jsonl:2: missing the "text" field'),
     ('["text"]', r'bad\.jsonl:2: missing the "text" field'),
     ('{"text": 5}', r'bad\.jsonl:2: "text" must be a string, got int')],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(CorpusError, match=message):
        read_documents(path)


@pytest.mark.parametrize("name,content", [("empty.txt", ""), ("blank.txt", "\n \n\n"), ("empty.jsonl", "\n")])
def test_empty_corpus(tmp_path, name, content):
    with pytest.raises(CorpusError, match=rf"{name}: the corpus is empty"):
        read_documents(write(tmp_path, name, content))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.txt: no such corpus file"):
        read_documents(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="is a folder"):
        read_documents(tmp_path)
    with pytest.raises(CorpusError, match=r"nope\.jsonl: no such corpus file"):
        list(iter_jsonl_documents(tmp_path / "nope.jsonl"))


def test_corpus_error_is_a_value_error():
    # The CLI turns ValueErrors into one-line messages; callers can catch either.
    assert issubclass(CorpusError, ValueError)


# --- the default corpus --------------------------------------------------------------------------------------
def test_data_dir_is_the_shipped_folder():
    assert data_dir() == Path(__file__).resolve().parent.parent / "data"


def test_default_documents_train_and_valid_are_disjoint():
    train, valid = default_documents("train"), default_documents("valid")
    assert len(train) == 26_617  # 2,316 + 4,720 stories, 17,531 poems, 2,050 Chinese stories
    assert len(valid) == 6_603  # 4,302 stories + 2,074 poems + 227 Chinese stories
    assert not set(train) & set(valid)


def test_documents_by_text_type_and_language():
    by_type = documents_by_text_type("valid")
    assert {kind: len(docs) for kind, docs in by_type.items()} == {"en-stories": 4_302, "zh-verse": 2_074,
                                                                   "zh-prose": 227}
    assert {kind: len(docs) for kind, docs in documents_by_text_type("train").items()} == {
        "en-stories": 7_036, "zh-verse": 17_531, "zh-prose": 2_050}
    assert list(by_type) == list(TEXT_TYPES)
    assert all(d.isascii() for d in by_type["en-stories"][:100])
    verse, prose = by_type["zh-verse"][0], by_type["zh-prose"][0]
    assert verse.startswith("《") and len(verse.splitlines()) >= 3  # a title line, then the verses
    assert len(prose.splitlines()) == 1 and len(prose) > 200 and "。" in prose  # one paragraph of prose
    by_language = documents_by_language("valid")
    assert by_language == {"en": by_type["en-stories"], "zh": by_type["zh-verse"] + by_type["zh-prose"]}
    assert sum(by_language.values(), []) == default_documents("valid")


def test_default_split_must_be_known():
    with pytest.raises(ValueError, match="split must be one of"):
        default_corpus_files("test")


def test_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_EDU_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    en, zh = tmp_path / "en", tmp_path / "zh"
    assert default_corpus_files("train") == [en / "tinystories_train.txt", en / "tinystories_train_more.txt",
                                             zh / "tang_train.txt", zh / "stories_train.txt"]
    assert default_corpus_files("valid") == [en / "tinystories_valid.txt", zh / "tang_valid.txt",
                                             zh / "stories_valid.txt"]
