"""Read text corpora as lists of documents.

Two on-disk formats are understood:

* plain text, where documents are separated by ``<|endoftext|>`` (TinyStories) or by blank lines
  (the Tang poems, tiny Shakespeare);
* MiniMind's pretraining JSONL: one JSON object per line with the document in ``"text"``.

Which one a file is comes from its content, not its name (a JSONL saved as ``x.JSONL`` or ``x.json`` is still
JSONL): a file whose first non-blank line starts with ``{`` is read as JSONL. ``format="text"`` or
``"jsonl"`` says it explicitly.

Every error names the file (and the line or byte offset) so a learner can fix their own data.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"


def data_dir() -> Path:
    """The corpus folder shipped with the course (``data/`` at the repository root).

    Set ``MINIMIND_EDU_DATA`` to use a copy elsewhere.
    """
    override = os.environ.get("MINIMIND_EDU_DATA")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "data"


def cache_dir() -> Path:
    """Where derived files go (trained tokenizer, token files): ``.cache/`` at the repository root.

    Set ``MINIMIND_EDU_CACHE`` to put them elsewhere. The folder is git-ignored and safe to delete.
    """
    override = os.environ.get("MINIMIND_EDU_CACHE")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=256)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """A hash of a file's bytes (blake2b, 128 bits); computed once per process while size and time are unchanged:
    the tokenizer and token caches and the checkpoints' record of the training data all ask for it."""
    stat = Path(path).stat()
    return _digest_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


class CorpusError(ValueError):
    """A corpus file cannot be read as documents; the message says which file and where."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CorpusError(f"{path}: no such corpus file")
    if path.is_dir():
        raise CorpusError(f"{path}: is a folder; pass the corpus files inside it")


def _read_utf8(path: Path) -> str:
    _check_file(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{path}: not UTF-8 text (invalid byte 0x{raw[err.start]:02x} at byte offset {err.start}); "
            "re-save the file as UTF-8"
        ) from None


def split_documents(text: str, separator: str | None = None) -> list[str]:
    """Split raw text into stripped, non-empty documents.

    ``separator=None`` picks ``<|endoftext|>`` when the text contains it, otherwise blank lines.
    With ``<|endoftext|>``, the piece after the last separator is dropped when the text does not end
    with one: in a file cut to a size limit (like the shipped TinyStories) that piece is a story cut off.
    """
    if separator is None:
        separator = ENDOFTEXT if ENDOFTEXT in text else "\n\n"
    if separator == "\n\n":
        pieces = re.split(r"\n\s*\n", text)
    else:
        pieces = text.split(separator)
        if separator == ENDOFTEXT and not text.rstrip().endswith(ENDOFTEXT) and len(pieces) > 1:
            pieces = pieces[:-1]
    return [p.strip() for p in pieces if p.strip()]


FORMATS = ("auto", "text", "jsonl")


def check_format(format: str) -> str:
    """``format`` itself when it is one of :data:`FORMATS`, else a ``ValueError`` listing them."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    return format


def detect_format(path: str | os.PathLike, format: str = "auto") -> str:
    """"jsonl" or "text" for ``path``: ``format`` when it is explicit, else decided by the first non-blank line."""
    if check_format(format) != "auto":
        return format
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return "jsonl" if raw.lstrip().startswith(b"{") else "text"
    return "text"  # empty: either reader reports it as empty


def iter_jsonl_documents(path: str | os.PathLike) -> Iterator[str]:
    """Stream the ``"text"`` of each line of a MiniMind-format JSONL file (works on files larger than memory)."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}:{lineno}: not UTF-8 (invalid byte 0x{raw[err.start]:02x} "
                    f"at byte offset {offset + err.start}); "
                    "re-save the file as UTF-8"
                ) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(
                    f"{path}:{lineno}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise CorpusError(f'{path}:{lineno}: missing the "text" field; expected {{"text": "..."}} per line')
            if not isinstance(obj["text"], str):
                raise CorpusError(f'{path}:{lineno}: "text" must be a string, got {type(obj["text"]).__name__}')
            if obj["text"].strip():
                yield obj["text"]


def read_documents(path: str | os.PathLike, separator: str | None = None, format: str = "auto") -> list[str]:
    """Read one corpus file as a list of documents (``format``: see :func:`detect_format`)."""
    path = Path(path)
    if detect_format(path, format) == "jsonl":
        docs = list(iter_jsonl_documents(path))
    else:
        docs = split_documents(_read_utf8(path), separator)
    if not docs:
        raise CorpusError(f"{path}: the corpus is empty (no non-blank document found)")
    return docs


# The shipped corpus by text type, each type a language and a kind of text the model is scored on separately
# (their losses differ by far: short verse with rare characters is much harder than children's stories).
# The training mix is all of it: the other mixes measured cost more than they gained (data/SOURCES.md).
DEFAULT_TEXT_TYPES = {
    "train": {
        "en-stories": ("en/tinystories_train.txt", "en/tinystories_train_more.txt"),
        "zh-verse": ("zh/tang_train.txt",),
        "zh-prose": ("zh/stories_train.txt",),
    },
    "valid": {
        "en-stories": ("en/tinystories_valid.txt",),
        "zh-verse": ("zh/tang_valid.txt",),
        "zh-prose": ("zh/stories_valid.txt",),
    },
}
TEXT_TYPES = {
    "en-stories": "English stories (TinyStories)",
    "zh-verse": "Chinese verse (Tang poems)",
    "zh-prose": "Chinese prose (short modern stories)",
}
DEFAULT_FILES = {split: tuple(f for files in types.values() for f in files)
                 for split, types in DEFAULT_TEXT_TYPES.items()}


def _check_split(split: str) -> None:
    if split not in DEFAULT_FILES:
        raise ValueError(f"split must be one of {sorted(DEFAULT_FILES)}, got {split!r}")


def default_corpus_files(split: str = "train") -> list[Path]:
    """The files behind :func:`default_documents`, in :data:`DEFAULT_TEXT_TYPES` order."""
    _check_split(split)
    return [data_dir() / name for name in DEFAULT_FILES[split]]


def default_documents(split: str = "train") -> list[str]:
    """The course's bilingual corpus as documents: English stories, Chinese verse, Chinese prose.

    ``split`` is ``"train"`` or ``"valid"``; the two splits come from disjoint files, so nothing leaks.
    """
    docs: list[str] = []
    for path in default_corpus_files(split):
        docs.extend(read_documents(path))
    return docs


def documents_by_text_type(split: str = "train") -> dict[str, list[str]]:
    """The default corpus split by text type: ``{"en-stories": [...], "zh-verse": [...], "zh-prose": [...]}``
    (names in :data:`TEXT_TYPES`)."""
    _check_split(split)
    return {kind: [doc for name in files for doc in read_documents(data_dir() / name)]
            for kind, files in DEFAULT_TEXT_TYPES[split].items()}


def documents_by_language(split: str = "train") -> dict[str, list[str]]:
    """The default corpus split by language: ``{"en": [...], "zh": [...]}`` (Chinese: the verse, then the prose)."""
    by_language: dict[str, list[str]] = {}
    for kind, docs in documents_by_text_type(split).items():
        by_language.setdefault(kind.split("-")[0], []).extend(docs)
    return by_language
