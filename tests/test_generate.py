"""Streaming text: pieces are only yielded once a character's bytes are complete, BOS goes first, EOS stops."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from minimind_edu.errors import InvalidArgument
from minimind_edu.generate import (
    check_sampling,
    filter_logits,
    generate,
    print_samples,
    stream_text,
    stream_text_from_ids,
)
from minimind_edu.model import MiniMind, ModelOutput, get_preset
from minimind_edu.tokenizer import BOS_ID, EOS_ID, get_default_tokenizer

from weights import randomize


class Scripted(torch.nn.Module):
    """A stand-in model whose greedy choice is ``script[i]`` at its i-th call, whatever the input."""

    def __init__(self, script: list[int]):
        super().__init__()
        self.config = get_preset("tiny")
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # stream_generate reads the device from a parameter
        self.script, self.inputs = script, []

    def forward(self, input_ids, past_key_values=None, use_cache=False):
        self.inputs.append(input_ids[0].tolist())
        logits = torch.zeros(1, input_ids.shape[1], self.config.vocab_size)
        logits[0, -1, self.script[len(self.inputs) - 1]] = 1.0
        return ModelOutput(logits, None, None, [] if use_cache else None)


def test_half_characters_are_held_back_and_eos_stops():
    tok = get_default_tokenizer()
    ids = tok.encode("Hi 龘!").ids
    assert len(tok.encode("龘").ids) == 2  # the character is two byte-level tokens: the case under test
    model = Scripted(ids + [EOS_ID, 5, 6])
    pieces = list(stream_text_from_ids(model, tok, [BOS_ID], max_new_tokens=20, temperature=0))
    assert "".join(pieces) == "Hi 龘!"
    assert not any("\ufffd" in p for p in pieces)
    assert "龘" in pieces[-2] or "龘" in pieces[-1]  # yielded whole, after its second token arrived
    assert len(model.inputs) == len(ids) + 1  # stopped at EOS: the tokens scripted after it never came


def test_stream_text_starts_the_prompt_with_bos():
    tok = get_default_tokenizer()
    model = Scripted([EOS_ID])
    assert list(stream_text(model, tok, "Once upon a time", temperature=0)) == []
    assert model.inputs[0] == [BOS_ID] + tok.encode("Once upon a time").ids


def test_wrapped_writer_breaks_english_at_spaces_and_chinese_anywhere():
    import io

    from minimind_edu.generate import WrappedWriter

    out = io.StringIO()
    w = WrappedWriter(out, width=20)
    text = "Once upon a time there was a little girl named Lily who loved the park."
    for i in range(0, len(text), 3):  # streamed in small pieces, cutting words
        w.write(text[i:i + 3])
    w.flush()
    lines = out.getvalue().split("\n")
    assert lines == ["Once upon a time", "there was a little", "girl named Lily who", "loved the park."]
    assert " ".join(lines) == text  # only spaces became line breaks: no word was cut

    out = io.StringIO()
    w = WrappedWriter(out, width=10, column=4)  # after a 4-column prompt
    w.write("床前明月光，疑是地上霜。")  # 12 characters, 2 columns each
    w.flush()
    assert out.getvalue().split("\n") == ["床前明", "月光，疑是", "地上霜。"]


def test_print_samples_wraps_long_continuations(monkeypatch):
    import io

    from minimind_edu import generate

    monkeypatch.setattr(generate, "stream_text", lambda *a, **k: iter([" word"] * 50))
    out = io.StringIO()
    samples = generate.print_samples(None, None, {"en": ["Once"]}, out=out, width=40)
    assert samples == {"Once": " word" * 50}
    lines = out.getvalue().strip().split("\n")
    assert len(lines) > 5 and max(map(len, lines)) <= 40 and lines[0].startswith("[en] Once word")


def test_print_samples_streams_every_prompt():
    model = MiniMind(get_preset("tiny"))
    with torch.no_grad():  # a zero embedding (tied to the LM head): all-zero logits, every token equally likely
        model.embed_tokens.weight.zero_()
    out = io.StringIO()
    samples = print_samples(model, get_default_tokenizer(), {"en": ["Once"], "zh": ["《春》"]},
                            max_new_tokens=3, seed=0, out=out)
    assert list(samples) == ["Once", "《春》"]
    assert out.getvalue().startswith("[en] Once") and "[zh] 《春》" in out.getvalue()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0, temperature=1.0), "max_new_tokens must be at least 1, got 0"),
    (dict(max_new_tokens=5, temperature=-0.5), "temperature must be >= 0 (0: always the most likely token), got -0.5"),
    (dict(max_new_tokens=5, temperature=1.0, top_k=-1), "top_k must be >= 0 (0: no top-k filter), got -1"),
    (dict(max_new_tokens=5, temperature=1.0, top_p=0.0), "top_p must be in (0, 1], got 0"),
])
def test_sampling_settings_are_checked_by_name(kwargs, message):
    with pytest.raises(InvalidArgument) as err:
        check_sampling(**kwargs)
    assert str(err.value) == message
    check_sampling(max_new_tokens=1, temperature=0.0, top_k=0, top_p=1.0)  # the edges are allowed


def test_greedy_generation_with_cache_equals_without():
    torch.manual_seed(1)
    model = randomize(MiniMind(get_preset("tiny")), std=0.1)
    prompt = [1, 400, 17, 2048]
    with_cache = generate(model, prompt, max_new_tokens=24, temperature=0, use_cache=True)
    without = generate(model, prompt, max_new_tokens=24, temperature=0, use_cache=False)
    assert with_cache == without
    assert len(with_cache) == 24 and len(set(with_cache)) > 1  # a real continuation, not one token repeated


def test_generation_stops_at_the_context_limit():
    model = MiniMind(replace(get_preset("tiny"), max_position_embeddings=8))
    assert len(generate(model, [1, 5, 6], max_new_tokens=50, temperature=0)) == 5  # 3 + 5 fill the 8 positions


def test_filter_logits_worked_examples():
    # probabilities 0.1, 0.5, 0.15, 0.25 (deliberately not sorted)
    logits = torch.tensor([[0.1, 0.5, 0.15, 0.25]]).log()
    kept = lambda out: (out[0] > float("-inf")).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=1)) == [1]
    assert kept(filter_logits(logits, top_k=10)) == [0, 1, 2, 3]  # k above the vocabulary keeps all
    # top_p keeps the most likely tokens until their total reaches p: 0.5 -> {1}; 0.7 -> 0.5 + 0.25; 0.8 -> + 0.15
    assert kept(filter_logits(logits, top_p=0.5)) == [1]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.8)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the best token always stays
    assert kept(filter_logits(logits, top_k=3, top_p=0.7)) == [1, 3]
    # kept logits are unchanged, and each row of a batch is filtered on its own
    out = filter_logits(logits, top_k=2)
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]
    batch = filter_logits(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), top_k=1)
    assert torch.isfinite(batch).tolist() == [[True, False, False], [False, False, True]]
