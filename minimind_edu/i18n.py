"""The course in two languages: which ones there are, and Chinese text in matplotlib plots.

Widgets and library plots take ``lang="en"`` or ``lang="zh"``; each keeps its own strings beside its code
(a string table here would separate text from the only place it is used). What is shared is here: the
language check, and fonts. matplotlib's default font (DejaVu Sans) has no Chinese glyphs and draws boxes
instead, so :func:`use_cjk_font` adds an installed CJK font as a fallback for the glyphs DejaVu lacks (Latin
text looks as before). Where no CJK font is installed, :func:`plot_text` falls back to the English text of a
library plot, so nothing is drawn as boxes; ``minimind-edu doctor`` says which font to install.
"""
from __future__ import annotations

from functools import lru_cache

LANGUAGES = ("en", "zh")
# Families a learner's machine is likely to have, most common first: Debian/Ubuntu (fonts-wqy-microhei,
# fonts-noto-cjk), macOS, Windows.
CJK_FAMILIES = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans CJK JP",
                "Noto Sans SC", "Source Han Sans SC", "PingFang SC", "Heiti SC", "Microsoft YaHei", "SimHei")


def check_language(lang: str) -> str:
    """``lang`` if the course speaks it, else a ValueError that lists the choices."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    return lang


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs that matplotlib can use, or None."""
    from matplotlib import font_manager

    manager = font_manager.fontManager

    def find() -> str | None:
        installed = {f.name for f in manager.ttflist}
        return next((family for family in CJK_FAMILIES if family in installed), None)

    if find() is None:
        # matplotlib caches the font list the first time it runs: a font installed after that (``make browser``
        # installs one) is on the system but not in the cache. Add what the system has that the cache lacks.
        known = {f.fname for f in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):  # a font file matplotlib cannot read
                    continue
    return find()


def use_cjk_font() -> str | None:
    """Let matplotlib draw Chinese: the installed CJK font (if any) becomes the fallback after the default
    sans-serif font. Returns its name, or None when there is none (then Chinese glyphs would be boxes)."""
    family = cjk_font()
    if family is not None:
        import matplotlib

        matplotlib.rcParams["font.family"] = ["sans-serif", family]
    return family


def plot_text(lang: str, en: str, zh: str) -> str:
    """The text for a plot in ``lang``: Chinese only where a CJK font can draw it (set up here), else English."""
    if check_language(lang) == "zh" and use_cjk_font() is not None:
        return zh
    return en
