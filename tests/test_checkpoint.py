"""Checkpoint files: names without wrapper prefixes, and every kind of folder a learner can point at."""
from __future__ import annotations

import pytest
import torch

from minimind_edu.checkpoint import clean_state_dict, load_trained, resolve_checkpoint
from minimind_edu.model import MiniMind, get_preset


def test_wrappers_never_leak_into_saved_keys():
    model = MiniMind(get_preset("tiny"))
    bare = list(model.state_dict())
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert list(clean_state_dict(compiled.state_dict())) == bare

    class Wrapper(torch.nn.Module):  # the shape of DDP: the model sits in .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert list(clean_state_dict(Wrapper(compiled).state_dict())) == bare
    assert clean_state_dict({"module._orig_mod.norm.weight": 1}) == {"norm.weight": 1}


def test_missing_and_empty_folders_say_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder; give a run's --out folder"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoint here"):
        resolve_checkpoint(tmp_path)


def test_an_exported_folder_loads_like_a_checkpoint(tmp_path):
    from minimind_edu.hf import export_hf
    from minimind_edu.tokenizer import default_tokenizer_dir

    torch.manual_seed(0)
    model = MiniMind(get_preset("tiny")).eval()
    folder = export_hf(model, tmp_path / "hf", tokenizer_dir=default_tokenizer_dir())
    loaded, tokenizer = load_trained(folder)
    assert not loaded.training and tokenizer.get_vocab_size() == 6400
    ids = torch.tensor([[1, 200, 300]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
