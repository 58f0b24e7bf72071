"""Sampling text from a MiniMind model: temperature, top-k, top-p, a KV cache, and text that streams.

Generation is where a learner meets the model they trained, so it streams: token ids become text as soon as
they form whole characters (a Chinese character is often two or three byte-level tokens), and long lines
wrap at word boundaries the way a notebook's output area would not.
"""
from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator, Sequence
from typing import TextIO

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .errors import InvalidArgument, at_least
from .model import MiniMind
from .tokenizer import BOS_ID, EOS_ID, apply_chat_template

# Openings in the style of the training text: TinyStories (en) and a Tang poem's title line (zh).
SAMPLE_PROMPTS: dict[str, list[str]] = {
    "en": ["Once upon a time, there was a little", "One day, Lily went to the park with her"],
    "zh": ["《春夜》李白\n", "《秋思》\n"],
}


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability >= top_p."""
    logits = logits.clone()
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits[logits < kth] = float("-inf")
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the best token always stays)
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token id from last-position logits of shape (B, vocab); temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_generate(
    model: MiniMind,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; stops at ``eos_token_id`` (not yielded), the budget or the context limit."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.as_tensor(list(prompt_ids) if not torch.is_tensor(prompt_ids) else prompt_ids, dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the bos id 1)")
    ids = ids.view(1, -1).to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    max_len = model.config.max_position_embeddings
    past = None
    next_input = ids
    try:
        for _ in range(max_new_tokens):
            if ids.shape[1] >= max_len:
                break
            if use_cache:
                out = model(next_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                out = model(ids)
            token = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, generator)
            if eos_token_id is not None and token.item() == eos_token_id:
                break
            yield int(token.item())
            next_input = token.view(1, 1)
            ids = torch.cat([ids, next_input], dim=1)
    finally:
        model.train(was_training)


def generate(model: MiniMind, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int = 64,
             **kwargs) -> list[int]:
    """The new token ids, all at once (see :func:`stream_generate` for the options)."""
    return list(stream_generate(model, prompt_ids, max_new_tokens, **kwargs))


def stream_text_from_ids(
    model: MiniMind, tokenizer: Tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 64, **kwargs
) -> Iterator[str]:
    """Yield pieces of decoded text as new tokens arrive after ``prompt_ids``; stops at EOS unless told otherwise.

    A Chinese character is often 2 or 3 byte-level tokens; text is held back while it ends in an incomplete
    character, so a character split over tokens appears once its last byte arrives. Bytes that can never form a
    character (an undertrained model emits such sequences) decode to U+FFFD and are shown as that.
    """
    kwargs.setdefault("eos_token_id", EOS_ID)
    new_ids: list[int] = []
    shown = ""
    for token in stream_generate(model, prompt_ids, max_new_tokens, **kwargs):
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text


def stream_text(model: MiniMind, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64,
                **kwargs) -> Iterator[str]:
    """Yield pieces of decoded text continuing ``prompt`` (see :func:`stream_text_from_ids`).

    The prompt starts with ``<|im_start|>`` as the beginning-of-text marker, as every document did in pretraining.
    """
    prompt_ids = [BOS_ID] + tokenizer.encode(prompt).ids
    yield from stream_text_from_ids(model, tokenizer, prompt_ids, max_new_tokens, **kwargs)


def print_samples(
    model: MiniMind,
    tokenizer: Tokenizer,
    prompts: dict[str, Sequence[str]] | None = None,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int | None = 0,
    out: TextIO | None = None,
    top_p: float | None = None,
    width: int = 100,
) -> dict[str, str]:
    """Stream a continuation of each prompt to ``out`` (stdout), lines wrapped before ``width`` columns;
    returns {prompt: continuation}."""
    out = out or sys.stdout
    samples = {}
    for lang, texts in (prompts or SAMPLE_PROMPTS).items():
        for prompt in texts:
            writer = WrappedWriter(out, width)
            writer.write(f"[{lang}] {prompt}")
            pieces = []
            for piece in stream_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=seed):
                pieces.append(piece)
                writer.write(piece)
            writer.flush()
            out.write("\n\n")
            samples[prompt] = "".join(pieces)
    return samples


def stream_chat(model: MiniMind, tokenizer: Tokenizer, message: str, max_new_tokens: int = 100,
                **kwargs) -> Iterator[str]:
    """Answer one user message in MiniMind's ChatML format (stops at ``<|im_end|>``); yields text pieces.

    A model that was only pretrained has never seen a conversation, so expect it to continue the text rather
    than answer: chat behaviour comes from supervised fine-tuning, the step after pretraining.
    """
    text = apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True)
    prompt_ids = tokenizer.encode(text, add_special_tokens=False).ids
    yield from stream_text_from_ids(model, tokenizer, prompt_ids, max_new_tokens, **kwargs)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """Refuse sampling settings that cannot work, naming the argument, before the first token is printed
    (an error in the middle of a streamed line is hard to read)."""
    at_least("max_new_tokens", max_new_tokens, 1)
    if not temperature >= 0:
        raise InvalidArgument("temperature", f"must be >= 0 (0: always the most likely token), got {temperature:g}")
    if top_k is not None and top_k < 0:
        raise InvalidArgument("top_k", f"must be >= 0 (0: no top-k filter), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InvalidArgument("top_p", f"must be in (0, 1], got {top_p:g}")


class WrappedWriter:
    """Writes streamed text to ``out``, starting a new line before ``width`` columns: at a space in English, at
    any character in Chinese (which has no spaces; a CJK character is two columns wide in a terminal or notebook).

    Notebooks wrap long output lines in the middle of words; this keeps generated text readable as it streams.
    Words are written whole, so the text appears a word at a time."""

    def __init__(self, out: TextIO, width: int = 100, column: int = 0):
        self.out, self.width, self.column = out, width, column
        self.word, self.space = "", False  # the word being received; a space waiting to be written before it

    @staticmethod
    def _columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    def _put(self, text: str) -> None:
        n = self._columns(text) + self.space
        if self.column > 0 and self.column + n > self.width:
            self.out.write("\n")  # a waiting space becomes the line break
            self.column, self.space = 0, False
        self.out.write(" " * self.space + text)
        self.column += self._columns(text) + self.space
        self.space = False

    def _flush_word(self) -> None:
        if self.word:
            self._put(self.word)
            self.word = ""

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write(ch)
                self.column, self.space = 0, False
            elif ch == " ":
                self._flush_word()
                self.space = self.column > 0
            elif self._columns(ch) == 2:
                self._flush_word()
                self._put(ch)
            else:
                self.word += ch
        self.out.flush()

    def flush(self) -> None:
        self._flush_word()
        self.out.flush()

