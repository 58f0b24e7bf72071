"""minimind-edu: build and pretrain MiniMind, a small Llama-style LLM, from scratch.

The notebooks in ``notebooks/`` build each piece in cells and then import the versions in this package,
so that the course, the command line (``minimind-edu``) and the tests all run the same code.
"""
from __future__ import annotations

import os

__version__ = "0.1.0"


def fast_mode() -> bool:
    """True when ``MINIMIND_EDU_FAST=1``: notebooks and demos shrink their work so CI stays quick."""
    return os.environ.get("MINIMIND_EDU_FAST", "").strip().lower() in {"1", "true", "yes"}
