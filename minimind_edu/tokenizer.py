"""The course tokenizer: a byte-level BPE trained with Hugging Face ``tokenizers``, MiniMind-style.

Special tokens (as in MiniMind2): ``<|endoftext|>`` = 0 (padding / unknown), ``<|im_start|>`` = 1 (begin),
``<|im_end|>`` = 2 (end). A ChatML chat template is saved with it, and the saved folder loads with
``transformers.AutoTokenizer.from_pretrained(folder)``.

The course tokenizer is trained on first use and cached in ``cache_dir()/tokenizer-<vocab>-<key>``, where the
key hashes everything that decides its merges (:func:`tokenizer_recipe`): the vocabulary size, the content of
every training file, the special tokens, the trainer's settings and the ``tokenizers`` version. A changed
corpus or vocabulary is therefore another folder, trained afresh, never a stale cache reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .corpus import (
    DEFAULT_FILES,
    cache_dir,
    data_dir,
    default_corpus_files,
    default_documents,
    file_digest,
    read_documents,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 6400
# Smallest useful vocabulary: the 256 byte tokens plus the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# ChatML: <|im_start|>role\ncontent<|im_end|>\n for each message; generation continues an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerError(ValueError):
    """Bad tokenizer input: the message names the argument, file or folder and what to do."""


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline (GPT-2's pre-tokenizer regex, no prefix space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def check_vocab_size(vocab_size: int) -> None:
    """Raise :class:`TokenizerError` unless ``vocab_size`` has room for the 256 bytes and the special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs the 256 byte tokens plus "
            f"{len(SPECIAL_TOKENS)} special tokens, so at least {MIN_VOCAB_SIZE}"
        )


def train_tokenizer(
    documents: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens take ids 0, 1, 2) on ``documents``.

    On a small corpus the vocabulary can end up smaller than ``vocab_size``: ``tok.get_vocab_size()`` tells.
    """
    check_vocab_size(vocab_size)
    docs = [d for d in documents if d and d.strip()]
    if not docs:
        raise TokenizerError("the corpus is empty: there is no non-blank document to train the tokenizer on")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i, "special tokens must take the first ids"
    return tok


def tokenizer_config() -> dict:
    """The ``tokenizer_config.json`` that makes ``AutoTokenizer`` use the right special tokens and template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TokenizerError(f"{directory} is a file; give a folder to save the tokenizer into")
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return directory


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer folder written by :func:`save_tokenizer` (or MiniMind's own, from ``data/minimind``)."""
    directory = Path(directory)
    path = directory / "tokenizer.json" if directory.is_dir() or not directory.suffix else directory
    if not path.exists():
        raise TokenizerError(
            f"no tokenizer at {directory}: expected {path}; train one with "
            f"`minimind-edu train-tokenizer --out {directory}`"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception with a serde message
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({err}); re-train or re-copy it") from None


def train_tokenizer_from_files(
    paths: Iterable[str | os.PathLike] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Tokenizer:
    """Train on the documents of corpus files (plain text or MiniMind JSONL); ``None`` = the shipped corpus
    (the course's sample of it, :func:`course_training_documents`)."""
    if paths is None:
        return train_tokenizer(course_training_documents(), vocab_size)
    paths = list(paths)
    if not paths:
        raise TokenizerError("no corpus files given: pass at least one file (or none at all for the shipped corpus)")
    check_vocab_size(vocab_size)  # fail before reading possibly large files
    docs: list[str] = []
    for path in paths:
        docs.extend(read_documents(path))
    return train_tokenizer(docs, vocab_size)


# The course tokenizer learns its merges from every second training document: half the time for about the same
# merges, because merges follow the most frequent pairs, which half of a corpus ranks almost as the whole does
# (benchmarks/bench_tokenizer.py times both and compares their tokens per byte on the validation split; the
# model itself still trains on every document).
TRAINING_SAMPLE_EVERY = 2


def course_training_documents() -> list[str]:
    """The shipped training documents the course tokenizer is trained on: every ``TRAINING_SAMPLE_EVERY``-th,
    so each file (each kind of text) keeps its share."""
    return default_documents("train")[::TRAINING_SAMPLE_EVERY]


def tokenizer_recipe(vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict:
    """What the course tokenizer is a function of: the cache key hashes it, and it is saved beside the files."""
    return {
        "recipe": 2,  # bump when train_tokenizer changes in a way the fields below do not show
        "vocab_size": vocab_size,
        "special_tokens": SPECIAL_TOKENS,
        "trainer": {"model": "BPE", "pre_tokenizer": "ByteLevel(add_prefix_space=False)",
                    "initial_alphabet": "ByteLevel.alphabet()", "min_frequency": 0},
        "tokenizers": tokenizers.__version__,
        "sample_every": TRAINING_SAMPLE_EVERY,
        "files": {name: file_digest(path) for name, path in zip(DEFAULT_FILES["train"], default_corpus_files("train"))},
    }


def default_tokenizer_dir(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Where the course tokenizer (trained on the shipped corpus) is kept: a folder named by its recipe's hash."""
    check_vocab_size(vocab_size)
    blob = json.dumps(tokenizer_recipe(vocab_size), sort_keys=True).encode("utf-8")
    return cache_dir() / f"tokenizer-{vocab_size}-{hashlib.blake2b(blob, digest_size=6).hexdigest()}"


def get_default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """The course tokenizer, trained on the shipped bilingual corpus the first time (a few seconds) and then reused.

    The folder is written to a temporary name and renamed, so a parallel or interrupted run never leaves a
    half-written tokenizer behind. Its ``recipe.json`` says what it was trained from.
    """
    target = default_tokenizer_dir(vocab_size)
    if not (target / "tokenizer_config.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix="tokenizer-", dir=target.parent))
        save_tokenizer(train_tokenizer(course_training_documents(), vocab_size), tmp)
        (tmp / "recipe.json").write_text(json.dumps(tokenizer_recipe(vocab_size), indent=1) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(target)


def minimind_tokenizer_dir(generation: str = "minimind2") -> Path:
    """MiniMind's own tokenizer, shipped in ``data/minimind/``: "minimind2" (vocab 6400, the course's special ids,
    what MiniMind2 models use) or "minimind3" (the current one, 36 special tokens)."""
    folders = {"minimind2": data_dir() / "minimind" / "minimind2", "minimind3": data_dir() / "minimind"}
    if generation not in folders:
        raise TokenizerError(f"generation must be one of {', '.join(folders)}; got {generation!r}")
    return folders[generation]


def apply_chat_template(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages in ChatML exactly as the saved Jinja template does (no transformers needed)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
