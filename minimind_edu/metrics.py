"""A run's record, ``metrics.jsonl``, read back and drawn: the loss curve a learner looks at first.

The trainer appends one JSON record per logged step (see :mod:`minimind_edu.train`); this module reads that
file and plots training and validation loss against tokens seen, for the end of a CLI run, the live plot
in notebook 05, and a look at any earlier run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .i18n import check_language, plot_text

if TYPE_CHECKING:  # matplotlib is imported only when something is drawn
    from matplotlib.axes import Axes


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a file, or the run folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
    return records


def plot_metrics(records: Sequence[dict], png_path: str | os.PathLike | None = None, title: str = "",
                 ax: Axes | None = None, lang: str = "en") -> Axes:
    """Training and validation loss against tokens seen; saved to ``png_path`` when given. Returns the axes.

    ``lang="zh"``: axis labels and legend in Chinese where a CJK font can draw them (else English)."""
    check_language(lang)
    plot_text(lang, "", "")  # before anything is drawn: a CJK font becomes matplotlib's fallback where there is one
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    train = [(r["tokens"] / 1e6, r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"] / 1e6, r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label=plot_text(lang, "train loss", "训练损失"), color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label=plot_text(lang, "validation loss", "验证损失"), color="tab:orange")
    ax.set_xlabel(plot_text(lang, "tokens seen (millions)", "已训练的词元数（百万）"))
    ax.set_ylabel(plot_text(lang, "cross-entropy (nats/token)", "交叉熵（nats/词元）"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if png_path is not None:
        Path(png_path).parent.mkdir(parents=True, exist_ok=True)
        ax.figure.tight_layout()
        ax.figure.savefig(png_path, dpi=110)
    return ax
