"""Notebook 03's hand-written training loop equals the library trainer's, bit for bit on a CPU.

``my_train`` is the loop the learner writes in ``notebooks/03_training_loop.ipynb`` (section 10). The test
takes the function from the notebook itself (one copy, no drift): a change to
``minimind_edu.train.Trainer.train_step`` that the notebook's loop no longer reproduces fails here too, not only
in the notebook run.
"""
from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind_edu import device, optim
from minimind_edu.data import IGNORE_INDEX, TokenData, make_batches
from minimind_edu.model import MiniMind
from minimind_edu.train import train
from minimind_edu.train_config import TrainConfig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_training_loop.ipynb"


def notebook_function(name: str) -> Callable:
    """The function ``name`` as defined in a code cell of notebook 03, with the names that cell uses."""
    for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or f"def {name}(" not in source:
            continue
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace = {"torch": torch, "device": device, "optim": optim, "MiniMind": MiniMind,
                     "make_batches": make_batches, "IGNORE_INDEX": IGNORE_INDEX, "TrainConfig": TrainConfig}
        exec(compile(ast.get_source_segment(source, node), str(NOTEBOOK), "exec"), namespace)
        return namespace[name]
    raise AssertionError(f"{NOTEBOOK.name} defines no {name}()")


my_train = notebook_function("my_train")


def toy_documents(n_docs: int = 48, seed: int = 0) -> TokenData:
    """Documents of 2 to 40 tokens: packed they fill windows, padded their rows count unequal targets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, n_docs)
    tokens = rng.integers(3, 6400, int(lengths.sum())).astype(np.uint16)
    return TokenData(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


@pytest.mark.parametrize("batch_kind", ["packed", "padded"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_hand_written_loop_equals_the_trainer_bit_for_bit(batch_kind, precision):
    cfg = TrainConfig(model="tiny", batch_size=3, seq_len=32, grad_accum_steps=3, max_steps=6, warmup_steps=2,
                      lr=3e-3, min_lr=3e-4, batch_kind=batch_kind, precision=precision, seed=5, out_dir=None,
                      log_every=1, eval_every=0, save_every=0, progress=False, measure_mfu=False)
    data = toy_documents()
    library = train(cfg, train_data=data).losses
    assert my_train(cfg, data) == library  # ==, not allclose: the very same floats
    assert library[-1] < library[0]  # and it trained
