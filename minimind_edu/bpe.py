"""A byte-level BPE tokenizer in pure Python, small enough to read in one sitting.

Byte-pair encoding (BPE) starts from the 256 possible bytes of UTF-8 text, so any string can be encoded
and nothing is ever "unknown". Training repeatedly finds the most frequent pair of neighbouring tokens and
gives that pair a new id (a *merge*); encoding replays the merges, earliest-learned first.

Like GPT-2 (and MiniMind, and :mod:`minimind_edu.tokenizer`), text is first *pre-tokenized* into chunks
(words with their leading space, runs of digits, punctuation, whitespace) and merges never cross a chunk
boundary, so " the" becomes one token but "the cat" never does.

:func:`from_tokenizers` builds a :class:`BPE` from a trained Hugging Face ``tokenizers`` tokenizer; it then
produces exactly the same ids as that tokenizer on text without special tokens (tested in tests/test_bpe.py).
This module is for learning and checking; train real tokenizers with :mod:`minimind_edu.tokenizer`, whose Rust
trainer handles megabytes in seconds (benchmarks/bench_tokenizer.py also compares encoding speed).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# GPT-2's pre-tokenizer: contractions, optional space + letters, optional space + digits, optional space +
# other symbols, whitespace not followed by a non-space (so the last space sticks to the next word), whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

try:  # Python's own `re` has no \p{L} (Unicode letter) class; the `regex` package does.
    import regex as _regex

    _SPLITTER = _regex.compile(GPT2_SPLIT_PATTERN)
except ImportError:  # pragma: no cover - exercised only where `regex` is not installed
    _SPLITTER = None


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into GPT-2 chunks; joining the chunks gives back ``text`` exactly."""
    if _SPLITTER is not None:
        return _SPLITTER.findall(text)
    return pretokenize_with_tokenizers(text)


def pretokenize_with_tokenizers(text: str) -> list[str]:
    """The same split done by ``tokenizers``' ByteLevel pre-tokenizer (used when ``regex`` is missing)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return [text[start:end] for _, (start, end) in ByteLevel(add_prefix_space=False).pre_tokenize_str(text)]


def count_pairs(ids: list[int], counts: Counter | None = None, weight: int = 1) -> Counter:
    """How often each pair of neighbours occurs in ``ids`` (added to ``counts``, each occurrence worth ``weight``)."""
    counts = Counter() if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] += weight
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@dataclass
class BPE:
    """A trained byte-level BPE.

    ``merges`` maps a pair of ids to the id of the merged token, in the order the merges were learned
    (earlier = applied first). ``vocab`` maps every id to the bytes it stands for. ``byte_ids[b]`` is the id
    of the single byte ``b`` (just ``b`` for a BPE trained here; a different order in ``tokenizers``).
    """

    merges: dict[tuple[int, int], int]
    vocab: dict[int, bytes]
    byte_ids: list[int] = field(default_factory=lambda: list(range(256)))
    split: bool = True  # pre-tokenize with GPT-2's pattern before merging

    def __post_init__(self) -> None:
        self.rank = {pair: r for r, pair in enumerate(self.merges)}

    def _encode_chunk(self, data: bytes) -> list[int]:
        ids = [self.byte_ids[b] for b in data]
        while len(ids) >= 2:
            # The pair learned earliest wins; pairs that were never merged rank last.
            best = min(zip(ids, ids[1:]), key=lambda p: self.rank.get(p, len(self.rank)))
            if best not in self.rank:
                break
            ids = merge_pair(ids, best, self.merges[best])
        return ids

    def encode(self, text: str) -> list[int]:
        chunks = pretokenize(text) if self.split else [text]
        return [i for chunk in chunks for i in self._encode_chunk(chunk.encode("utf-8"))]

    def decode(self, ids: Iterable[int]) -> str:
        # A slice of ids can end inside a multi-byte character: show U+FFFD there rather than fail.
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes behind each id: handy to *see* what the tokens are."""
        return [self.vocab[i] for i in ids]


def train(text: str | Iterable[str], vocab_size: int, split: bool = True, verbose: bool = False) -> BPE:
    """Learn merges from ``text`` (a string or several documents) until ``vocab_size`` tokens exist.

    Stops early when no pair occurs twice. Ties go to the pair seen first in the text, so results are
    deterministic. ``split=False`` trains on the raw bytes (used for the classic "aaabdaaabac" example).
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE starts with 256 byte tokens")
    docs = [text] if isinstance(text, str) else list(text)
    # Identical chunks ("the", " and") are counted once with a weight: much faster than scanning them all.
    chunk_counts = Counter(c.encode("utf-8") for doc in docs for c in (pretokenize(doc) if split else [doc]))
    if not chunk_counts:
        raise ValueError("the training text is empty: give at least one non-empty string")
    words = [list(chunk) for chunk in chunk_counts]
    weights = list(chunk_counts.values())
    merges: dict[tuple[int, int], int] = {}
    vocab = {i: bytes([i]) for i in range(256)}
    for new_id in range(256, vocab_size):
        counts: Counter = Counter()
        for ids, weight in zip(words, weights):
            count_pairs(ids, counts, weight)
        if not counts:
            break
        best = max(counts, key=counts.__getitem__)  # max() keeps the first of equal counts
        if counts[best] < 2:
            break
        merges[best] = new_id
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        words = [merge_pair(ids, best, new_id) for ids in words]
        if verbose:
            print(f"merge {new_id - 255}: {best} -> {new_id} {vocab[new_id]!r} ({counts[best]} times)")
    return BPE(merges, vocab, split=split)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, which ``tokenizers`` uses to store byte tokens.

    Printable Latin-1 bytes map to themselves; the rest (space, control bytes...) are shifted to U+0100 on,
    which is why a space shows up as "Ġ" (U+0120) and a newline as "Ċ" in ``tokenizer.json``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def from_tokenizers(tokenizer: Tokenizer) -> BPE:
    """A :class:`BPE` with the vocabulary and merges of a byte-level ``tokenizers.Tokenizer``.

    ``tokenizer.json`` writes each token in GPT-2's byte-to-unicode alphabet; this turns them back into bytes.
    Ids then match ``tokenizer.encode(text).ids`` for text without special tokens. One caveat: ``regex`` may
    follow a newer Unicode version than ``tokenizers`` and split a recently added letter (e.g. U+0558) differently.
    """
    spec = json.loads(tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or spec.get("normalizer"):
        raise ValueError("from_tokenizers needs a byte-level BPE without normalizer (like the course tokenizer)")
    if pre.get("add_prefix_space") or not pre.get("use_regex", True):
        raise ValueError("from_tokenizers needs ByteLevel(add_prefix_space=False, use_regex=True)")
    char_to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    token_to_id: dict[str, int] = model["vocab"]

    def to_bytes(token: str) -> bytes:
        if all(ch in char_to_byte for ch in token):
            return bytes(char_to_byte[ch] for ch in token)
        return token.encode("utf-8")

    vocab = {i: to_bytes(token) for token, i in token_to_id.items()}
    for added in spec.get("added_tokens", []):  # special tokens are stored as plain text
        vocab[added["id"]] = added["content"].encode("utf-8")
    byte_ids = [token_to_id[ch] for _, ch in sorted(bytes_to_unicode().items())]
    merges = {}
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge  # older files store "a b"
        merges[(token_to_id[left], token_to_id[right])] = token_to_id[left + right]
    return BPE(merges, vocab, byte_ids, split=True)
