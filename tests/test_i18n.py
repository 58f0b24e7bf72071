"""Languages and Chinese text in plots (minimind_edu.i18n)."""
from __future__ import annotations

import warnings

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimind_edu import i18n  # noqa: E402


def test_languages_are_checked_by_name():
    assert i18n.check_language("zh") == "zh"
    with pytest.raises(ValueError, match="lang must be one of en, zh, got 'fr'"):
        i18n.check_language("fr")


def test_plot_text_is_chinese_only_where_a_cjk_font_can_draw_it(monkeypatch):
    assert i18n.plot_text("en", "batch", "批大小") == "batch"
    monkeypatch.setattr(i18n, "cjk_font", lambda: None)
    assert i18n.plot_text("zh", "batch", "批大小") == "batch"  # no font: English, never boxes
    monkeypatch.setattr(i18n, "cjk_font", lambda: "Some CJK Font")
    monkeypatch.setattr(matplotlib, "rcParams", dict(matplotlib.rcParams))
    assert i18n.plot_text("zh", "batch", "批大小") == "批大小"
    assert matplotlib.rcParams["font.family"] == ["sans-serif", "Some CJK Font"]


def test_chinese_renders_without_missing_glyphs_when_a_cjk_font_is_installed():
    family = i18n.use_cjk_font()
    if family is None:
        pytest.skip("no CJK font on this machine (make browser installs fonts-wqy-microhei)")
    fig, ax = plt.subplots()
    ax.set_title("显存 (GiB) 与批大小")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)" for each box it draws
        fig.canvas.draw()
    plt.close(fig)
