"""From text files to training batches: tokenize once, memory-map, cut into windows, shuffle by seed.

A corpus is tokenized once into a flat token file in the cache (keyed by the files' contents and the
tokenizer), then memory-mapped, so that a corpus larger than memory trains as well as the shipped one.
Batches are a pure function of a seed and a position, so a checkpoint can save the position and a resumed
run continues with the very next batch, and several processes can each take their own share.

Token stream convention: every document is ``[BOS] + ids + [EOS]`` (BOS=1, EOS=2). Packed windows are
``seq_len + 1`` tokens long (inputs = window[:-1], targets = window[1:]) and consecutive windows share
one token, so every token is predicted exactly once per epoch.

The order is a pure function of ``(seed, consumed)``: epoch ``e`` visits the windows in
``np.random.default_rng([seed, e]).permutation(n)``. ``consumed`` counts windows (or rows) taken by all
ranks together, so saving it in a checkpoint and loading it back continues with the very next batch:
nothing repeated, nothing skipped. With ``world_size`` ranks, each global batch of
``batch_size * world_size`` items is cut into contiguous per-rank pieces, so 2 ranks with batch B see
exactly what one process with batch 2B sees.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from .corpus import (
    CorpusError,
    cache_dir,
    check_format,
    default_corpus_files,
    detect_format,
    file_digest,
    iter_jsonl_documents,
    read_documents,
)
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, default_tokenizer_dir, get_default_tokenizer, load_tokenizer

# Targets equal to this add nothing to the loss: it is F.cross_entropy's default ignore_index, which the model
# relies on, so padding is ignored without the model knowing about batches.
IGNORE_INDEX = -100
FORMAT_VERSION = 2  # bump when the token file layout or the cache key changes, so old caches are not reused
_ENCODE_CHUNK = 512  # documents per encode_batch call: big enough for the Rust threads, small in memory


@dataclass
class TokenData:
    """A tokenized corpus: one flat token array and where each document starts in it."""

    tokens: np.ndarray  # uint16 (vocab <= 65536) or uint32; np.memmap when it came from the cache
    doc_offsets: np.ndarray  # int64, n_docs + 1 entries: document i is tokens[offsets[i]:offsets[i+1]]
    source: str = "<memory>"  # what to name in error messages
    max_token_id: int | None = None
    files: tuple[str, ...] = ()  # the corpus files it was read from (empty: made in memory)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1] - self.doc_offsets[0])

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]]

    def flat(self) -> np.ndarray:
        """All tokens of these documents, in order (a view, no copy)."""
        return self.tokens[self.doc_offsets[0] : self.doc_offsets[-1]]

    def slice_docs(self, start: int, stop: int) -> TokenData:
        # max_token_id of the whole is an upper bound for the part: cheap, and only errs towards checking
        return TokenData(self.tokens, self.doc_offsets[start : stop + 1], f"{self.source}[docs {start}:{stop}]",
                         self.max_token_id, self.files)

    def check_vocab(self, vocab_size: int, what: str = "the model") -> None:
        """Raise ``CorpusError`` if a token id does not fit an embedding table of ``vocab_size`` rows."""
        top = self.max_token_id if self.max_token_id is not None else int(self.flat().max(initial=0))
        if top >= vocab_size:
            where = int(np.argmax(self.flat() >= vocab_size))
            raise CorpusError(
                f"{self.source}: token id {top} (first bad token at position {where}) is beyond the vocabulary of "
                f"{what} (vocab_size={vocab_size}); use the tokenizer the model was built for, or set the model's "
                f"vocab_size to at least {top + 1}"
            )


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _encode_docs(tok: Tokenizer, docs: list[str]) -> list[list[int]]:
    # add_special_tokens=False: BOS/EOS are added here, explicitly, so the convention is visible.
    return [[BOS_ID, *e.ids, EOS_ID] for e in tok.encode_batch(docs, add_special_tokens=False)]


def tokenize_documents(docs: Iterable[str], tokenizer: Tokenizer | None = None, source: str = "<memory>") -> TokenData:
    """Tokenize a (small) list of documents in memory: each becomes ``[BOS] + ids + [EOS]``."""
    tok = tokenizer or get_default_tokenizer()
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise CorpusError(f"{source}: the corpus is empty (no non-blank document)")
    encoded = _encode_docs(tok, docs)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    tokens = np.fromiter((t for e in encoded for t in e), dtype=_token_dtype(tok.get_vocab_size()),
                         count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenData(tokens, offsets, source, int(tokens.max()))


def _iter_file_documents(path: Path, bar: tqdm, format: str) -> Iterator[str]:
    """Documents of one file; JSONL is streamed line by line (files larger than memory are fine)."""
    if format == "jsonl":
        for doc in iter_jsonl_documents(path):
            bar.update(len(doc.encode("utf-8")) + 12)  # approximate bytes: progress, not accounting
            yield doc
    else:  # plain text is split on separators, which needs the whole file in memory
        docs = read_documents(path, format="text")
        for doc in docs:
            bar.update(len(doc.encode("utf-8")) + 2)
            yield doc


def token_cache_key(paths: Sequence[Path], tokenizer_dir: Path, formats: Sequence[str] | None = None) -> str:
    """Key of the cached token file: the contents of every corpus file, how each was read (its format and the
    document separator rule) and the contents of ``tokenizer.json``: the same bytes read another way, or
    tokenized by another tokenizer, are another cache."""
    formats = list(formats) if formats is not None else [detect_format(p) for p in paths]
    parts = [f"v{FORMAT_VERSION}", file_digest(tokenizer_dir / "tokenizer.json"), "separator=auto"]
    parts += [f"{fmt}:{file_digest(p)}" for p, fmt in zip(paths, formats)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def _resolve_tokenizer(tokenizer_dir: str | os.PathLike | None) -> tuple[Tokenizer, Path]:
    if tokenizer_dir is None:
        return get_default_tokenizer(), default_tokenizer_dir()
    return load_tokenizer(tokenizer_dir), Path(tokenizer_dir)


def tokenize_files(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    progress: bool = True,
    format: str = "auto",
) -> TokenData:
    """Tokenize corpus files once into ``cache_dir()/tokens/<key>.bin`` and memory-map the result.

    The key covers the file contents and the tokenizer, so a second call is instant and any edit to
    either re-tokenizes. Tokens are streamed to disk in chunks: memory use does not grow with the corpus.
    The files are written under temporary names and renamed, so an interrupted run leaves no bad cache.
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise CorpusError(f"{p}: no such corpus file")
    formats = [detect_format(p, format) for p in paths]
    tok, tok_dir = _resolve_tokenizer(tokenizer_dir)
    folder = cache_dir() / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    key = token_cache_key(paths, tok_dir, formats)
    bin_path, meta_path, idx_path = folder / f"{key}.bin", folder / f"{key}.json", folder / f"{key}.docs.npy"
    source = ", ".join(str(p) for p in paths)
    if not meta_path.exists():
        dtype = _token_dtype(tok.get_vocab_size())
        lengths = array.array("q")  # 8 bytes per document, not a Python int object each
        max_id = 0
        fd, tmp_bin = tempfile.mkstemp(prefix=f"{key}-", suffix=".tmp", dir=folder)
        total = sum(p.stat().st_size for p in paths)
        try:
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing",
                                                  disable=not progress, leave=False) as bar:
                for p, fmt in zip(paths, formats):
                    batch: list[str] = []
                    for doc in _iter_file_documents(p, bar, fmt):
                        batch.append(doc)
                        if len(batch) == _ENCODE_CHUNK:
                            max_id = _write_chunk(tok, batch, out, lengths, dtype, max_id)
                            batch = []
                    if batch:
                        max_id = _write_chunk(tok, batch, out, lengths, dtype, max_id)
            if not lengths:
                raise CorpusError(f"{source}: the corpus is empty (no non-blank document found)")
            offsets = np.concatenate([[0], np.cumsum(np.frombuffer(lengths, dtype=np.int64))]).astype(np.int64)
            fd2, tmp_idx = tempfile.mkstemp(prefix=f"{key}-", suffix=".npy", dir=folder)
            with os.fdopen(fd2, "wb") as f:
                np.save(f, offsets, allow_pickle=False)
            os.replace(tmp_bin, bin_path)
            os.replace(tmp_idx, idx_path)
            meta = {"format": FORMAT_VERSION, "dtype": dtype.name, "n_tokens": int(offsets[-1]),
                    "n_docs": len(lengths), "max_token_id": max_id, "sources": [str(p) for p in paths],
                    "formats": formats,
                    "tokenizer": str(tok_dir)}
            # Unique temporary names throughout: several processes (DDP ranks) may tokenize at once.
            fd3, tmp_meta = tempfile.mkstemp(prefix=f"{key}-", suffix=".json", dir=folder)
            with os.fdopen(fd3, "w") as f:
                f.write(json.dumps(meta, indent=1))
            os.replace(tmp_meta, meta_path)  # written last: its presence means the cache is complete
        finally:
            if os.path.exists(tmp_bin):
                os.unlink(tmp_bin)
    meta = json.loads(meta_path.read_text())
    offsets = np.load(idx_path, allow_pickle=False)
    tokens = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))
    return TokenData(tokens, offsets, source, meta["max_token_id"], tuple(str(p) for p in paths))


def _write_chunk(tok, batch, out, lengths, dtype, max_id) -> int:
    encoded = _encode_docs(tok, batch)
    flat = np.fromiter((t for e in encoded for t in e), dtype=np.int64)
    out.write(flat.astype(dtype).tobytes())
    lengths.extend(len(e) for e in encoded)
    return max(max_id, int(flat.max()))


def load_splits(
    train_paths: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    valid_paths: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    valid_fraction: float = 0.02,
    progress: bool = True,
    format: str = "auto",
) -> tuple[TokenData, TokenData]:
    """Training and validation token data that share no document.

    * Nothing given: the shipped corpus, whose train and valid files are disjoint.
    * ``valid_paths`` given: those files are the validation set.
    * Only ``train_paths``: the LAST ``valid_fraction`` of its documents (at least one) is held out as a
      contiguous range and never trained on.
    """
    if train_paths is None:
        if valid_paths is not None:
            raise ValueError("valid_paths was given without train_paths; give both or neither")
        train_paths, valid_paths = default_corpus_files("train"), default_corpus_files("valid")
    check_format(format)
    train = tokenize_files(train_paths, tokenizer_dir, progress, format)
    if valid_paths is not None:
        return train, tokenize_files(valid_paths, tokenizer_dir, progress, format)
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    if train.n_docs < 2:
        raise CorpusError(f"{train.source}: only {train.n_docs} document; need at least 2 to hold one out for "
                          "validation (or pass validation files)")
    n_valid = max(1, int(round(train.n_docs * valid_fraction)))
    cut = train.n_docs - n_valid
    return train.slice_docs(0, cut), train.slice_docs(cut, train.n_docs)


class _Batches:
    """Shared bookkeeping: a seeded permutation per epoch and a global position ``consumed``."""

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int, world_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.consumed = 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
            self._perm_epoch = epoch
        return self._perm

    def _take(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for j in range(count):  # count is a batch: a python loop is cheap and handles epoch crossings
            epoch, i = divmod(start + j, self.n_items)
            out[j] = self._order(epoch)[i]
        return out

    def next_indices(self) -> np.ndarray:
        """This rank's items of the next global batch; advances the position by the whole global batch."""
        start = self.consumed + self.rank * self.batch_size
        self.consumed += self.batch_size * self.world_size
        return self._take(start, self.batch_size)

    @property
    def epoch(self) -> float:
        return self.consumed / self.n_items

    def state_dict(self) -> dict:
        return {"consumed": int(self.consumed), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"data seed in the checkpoint ({state['seed']}) differs from this run's ({self.seed})")
        self.consumed = int(state["consumed"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._make(self.next_indices())

    def eval_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` fixed batches, the same every call, spread evenly over the data (so a corpus of English
        then Chinese files is evaluated on both); if the data is too short, items repeat."""
        total = n * self.batch_size
        if total <= self.n_items:
            idx = np.arange(total, dtype=np.int64) * self.n_items // total
        else:
            idx = np.arange(total, dtype=np.int64) % self.n_items
        return [self._make(idx[i * self.batch_size : (i + 1) * self.batch_size]) for i in range(n)]

    def _make(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class PackedBatches(_Batches):
    """Documents laid end to end and cut into windows of ``seq_len + 1`` tokens: no padding at all."""

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.data, self.seq_len, self.flat = data, seq_len, data.flat()
        n_windows = (len(self.flat) - 1) // seq_len
        if n_windows < 1:
            raise CorpusError(
                f"{data.source}: the corpus has {len(self.flat)} tokens, shorter than one training window of "
                f"seq_len + 1 = {seq_len + 1} tokens; use a smaller seq_len or more text"
            )
        super().__init__(n_windows, batch_size, seed, rank, world_size)

    def _make(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.flat[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in idx])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class PaddedBatches(_Batches):
    """MiniMind's layout: one document per row, cut to ``seq_len + 1`` tokens, right-padded with PAD.

    Targets at padded positions are ``IGNORE_INDEX``, so padding adds nothing to the loss, but the model
    still computes every padded position: that is the waste :func:`padding_waste` measures.
    """

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.data, self.seq_len = data, seq_len
        super().__init__(data.n_docs, batch_size, seed, rank, world_size)

    def _make(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.full((len(idx), self.seq_len + 1), PAD_ID, dtype=np.int64)
        real = np.zeros((len(idx), self.seq_len + 1), dtype=bool)
        for r, i in enumerate(idx):
            doc = self.data.doc(int(i))[: self.seq_len + 1]
            rows[r, : len(doc)] = doc
            real[r, : len(doc)] = True
        inputs = torch.from_numpy(rows[:, :-1].copy())
        targets = torch.from_numpy(np.where(real[:, 1:], rows[:, 1:], IGNORE_INDEX))
        return inputs, targets


def make_batches(
    data: TokenData, kind: str = "packed", batch_size: int = 8, seq_len: int = 256,
    seed: int = 0, rank: int = 0, world_size: int = 1,
) -> PackedBatches | PaddedBatches:
    """``kind="packed"`` (default, no waste) or ``"padded"`` (MiniMind's one document per row)."""
    if kind == "packed":
        return PackedBatches(data, batch_size, seq_len, seed, rank, world_size)
    if kind == "padded":
        return PaddedBatches(data, batch_size, seq_len, seed, rank, world_size)
    raise ValueError(f'batch kind must be "packed" or "padded", got {kind!r}')


def padding_waste(data: TokenData, seq_len: int) -> dict[str, float]:
    """What one-document-per-row costs at ``seq_len``, compared with packing.

    Returns the fraction of computed positions that are padding (``padding_fraction``), the fraction of
    the corpus's tokens cut off by truncation (``truncated_fraction``), and how many forward positions
    padding needs per useful prediction vs packing (``compute_ratio``; packing is 1.0).
    """
    lengths = np.diff(data.doc_offsets).astype(np.int64)
    kept = np.minimum(lengths, seq_len + 1)
    useful = np.maximum(kept - 1, 0)  # a row of L tokens gives L - 1 predictions
    computed = len(lengths) * seq_len
    return {
        "seq_len": float(seq_len),
        "n_docs": float(len(lengths)),
        "mean_doc_tokens": float(lengths.mean()),
        "padding_fraction": float(1.0 - useful.sum() / computed),
        "truncated_fraction": float((lengths - kept).sum() / lengths.sum()),
        "compute_ratio": float(computed / useful.sum()),
    }
