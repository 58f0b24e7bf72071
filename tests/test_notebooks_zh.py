"""The Chinese edition (notebooks/zh/) stays in step with the English one.

For every English notebook (chapters and solutions) there is a Chinese twin at the same path under ``zh/``, and
the pair has the same cells: the same number, kinds, tags and collapsed state. Their code is the same program:
the token streams of each pair of code cells are equal once comments are set aside, a string literal may be
translated (the Chinese one then holds Chinese characters: printed explanations, plot labels), and a
``lang="zh"`` keyword (widgets and plots in Chinese) may be added. The Chinese markdown is Chinese: a paragraph
of English prose, outside code, formulas and names, fails. Changing an English code cell without its Chinese
twin fails here; ``test_a_drifted_code_cell_is_caught`` shows it on a deliberate drift.
"""
from __future__ import annotations

import ast
import copy
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ZH = NOTEBOOKS / "zh"
ENGLISH = sorted([*NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), *NOTEBOOKS.glob("solutions/[0-9][0-9]_*.ipynb")])
IDS = [str(p.relative_to(NOTEBOOKS)) for p in ENGLISH]
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
TRANSLATED = "<translated text>"


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def shown_values(literal: str) -> list[str]:
    """The expressions an f-string shows (``f"{n} tokens"`` -> ``["n"]``), in sorted order (Chinese puts words,
    and so values, in another order). Translated words around and inside them may change (string constants
    become ``'…'``), what they compute may not. An English plural ending (``{'s' if n > 1 else ''}``) has no
    Chinese counterpart, and a string constant placed for layout (``{'text type':<11}``) is words: both are
    left out."""
    try:
        node = ast.parse(literal.strip(), mode="eval").body
    except SyntaxError:
        return []
    values = []
    for field in ast.walk(node):
        if not isinstance(field, ast.FormattedValue) or isinstance(field.value, ast.Constant):
            continue
        shown = ast.unparse(field.value)
        if re.fullmatch(r"""['"]s['"] if .+ else ['"]{2}""", shown):
            continue
        for const in ast.walk(field.value):
            if isinstance(const, ast.Constant) and isinstance(const.value, str):
                const.value = "…"
        values.append(ast.unparse(field.value))
    return sorted(values)


def translated(literal: str) -> str:
    return f"{TRANSLATED} {json.dumps(shown_values(literal))}"


def code_tokens(source: str) -> list[str]:
    """The cell's program as tokens: no comments or blank lines, a string holding Chinese marked as text (with
    the values it shows)."""
    tokens, fstring = [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[tok.type]
        if kind in ("COMMENT", "NL", "ENCODING", "ENDMARKER"):
            continue
        if kind == "FSTRING_START":  # Python 3.12+ splits f-strings into parts: join them back into one string
            fstring = tok.string
            continue
        if fstring is not None:
            fstring += tok.string
            if kind != "FSTRING_END":
                continue
            tokens.append(translated(fstring) if CJK.search(fstring) else fstring)
            fstring = None
            continue
        if kind == "STRING" and CJK.search(tok.string):
            tokens.append(translated(tok.string))
        elif kind in ("NEWLINE", "INDENT", "DEDENT"):
            tokens.append(kind)
        else:
            tokens.append(tok.string)
    return without_lang_keyword(tokens)


def without_lang_keyword(tokens: list[str]) -> list[str]:
    """Drop ``lang="..."`` keyword arguments (with the comma before them): the one code difference allowed."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "lang" and i + 2 < len(tokens) and tokens[i + 1] == "=" and out and out[-1] in ("(", ","):
            if out[-1] == ",":
                out.pop()
            i += 3
            if out and out[-1] == "(" and i < len(tokens) and tokens[i] == ",":
                i += 1  # lang was the first argument: drop the comma after it instead
            continue
        out.append(tokens[i])
        i += 1
    return out


def is_string(token: str) -> bool:
    return bool(re.match(r"""[rRbBfFuU]{0,2}['"]""", token))


def same_code(english: str, chinese: str) -> bool:
    """Equal programs: token by token, where a Chinese string may stand for an English one that shows the
    same values."""
    en, zh = code_tokens(english), code_tokens(chinese)
    if len(en) != len(zh):
        return False
    return all(a == b or (b.startswith(TRANSLATED) and is_string(a) and translated(a) == b) for a, b in zip(en, zh))


def cell_shape(cell: dict) -> tuple:
    meta = cell.get("metadata", {})
    return cell["cell_type"], tuple(meta.get("tags", [])), bool(meta.get("jupyter", {}).get("source_hidden"))


def differences(english: list[dict], chinese: list[dict]) -> list[str]:
    """What keeps two editions of a notebook out of step (empty when in step)."""
    shapes_en, shapes_zh = [cell_shape(c) for c in english], [cell_shape(c) for c in chinese]
    if shapes_en != shapes_zh:
        pairs = enumerate(zip(shapes_en, shapes_zh))
        first = next((i for i, (a, b) in pairs if a != b), min(len(english), len(chinese)))
        return [f"cells differ: {len(english)} English, {len(chinese)} Chinese; the first that differs in kind, tags "
                f"or collapse is cell {first}"]
    return [f"cell {i}: the code differs" for i, (a, b) in enumerate(zip(english, chinese))
            if a["cell_type"] == "code" and not same_code("".join(a["source"]), "".join(b["source"]))]


def english_paragraphs(markdown: str) -> list[str]:
    """Paragraphs of English prose in a Chinese markdown cell: no Chinese character, three or more English
    words in a row, once code blocks, inline code, formulas, link targets and HTML tags are set aside."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$|`[^`\n]+`|<[^>\n]+>", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        for line in paragraph.splitlines() if paragraph.lstrip().startswith("|") else [paragraph]:
            if not CJK.search(line) and re.search(r"[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,}){2,}", line):
                found.append(line.strip()[:80])
    return found


def twin(english: Path) -> Path:
    return ZH / english.relative_to(NOTEBOOKS)


def test_every_notebook_has_a_chinese_twin_and_no_other():
    chinese = sorted([*ZH.glob("[0-9][0-9]_*.ipynb"), *ZH.glob("solutions/[0-9][0-9]_*.ipynb")])
    assert [twin(p) for p in ENGLISH] == chinese


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_the_editions_are_in_step(english):
    assert differences(load(english), load(twin(english))) == []


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_the_chinese_markdown_is_chinese(english):
    left = {i: found for i, c in enumerate(load(twin(english))) if c["cell_type"] == "markdown"
            for found in [english_paragraphs("".join(c["source"]))] if found}
    assert left == {}, f"{twin(english).name}: English paragraphs left in markdown cells {left}"


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_the_chinese_notebook_opens_with_the_glossary(english):
    opening = "".join(load(twin(english))[0]["source"])
    assert "glossary.zh.md" in opening, f"{twin(english).name}: link docs/glossary.zh.md (术语表) in the first cell"


def test_a_drifted_code_cell_is_caught():
    english = load(ENGLISH[0])
    chinese = copy.deepcopy(load(twin(ENGLISH[0])))
    assert differences(english, chinese) == []
    i = next(i for i, c in enumerate(chinese) if c["cell_type"] == "code")
    chinese[i]["source"] = ["".join(chinese[i]["source"]) + "\nextra = 1  # 英文版没有这一行\n"]
    assert differences(english, chinese) == [f"cell {i}: the code differs"]
    del chinese[i]
    assert differences(english, chinese)[0].startswith("cells differ")


def test_what_the_comparison_allows_and_refuses():
    assert same_code('print(f"{n} tokens")  # count', 'print(f"{n} 个词元")  # 计数')  # translated text
    assert not same_code('print(f"{n} tokens")', 'print(f"{n + 1} 个词元")')  # ... showing the same values
    assert same_code('print(f"{a} of {b}")', 'print(f"{b} 中的 {a}")')  # in any order
    assert same_code("print(f\"{'found' if ok else 'trained'}\")", "print(f\"{'已存在' if ok else '已训练'}\")")
    assert same_code("print(f\"{n} GPU{'s' if n > 1 else ''}\")", 'print(f"{n} 块 GPU")')  # no plural in Chinese
    assert same_code("print(f\"{'text type':<11} {x:.2f}\")", "print(f\"{'文本类型':<7} {x:.2f}\")")
    assert same_code("explorer = memory_explorer(layers=12)", 'explorer = memory_explorer(layers=12, lang="zh")')
    assert same_code("plot()", 'plot(lang="zh")') and same_code("plot(x)", 'plot(lang="zh", x)')
    assert not same_code("x = 12", "x = 13")  # a number is code
    assert not same_code('get_preset("minimind2-small")', 'get_preset("minimind2")')  # so is a name
    # Any string may be translated (nbval then proves the Chinese notebook still runs), but only a string:
    assert same_code('label = "batch"', 'label = "批大小"') and not same_code("a = 1", 'a = "一"')
    assert english_paragraphs("这是中文。\n\nThis paragraph is English prose.") == ["This paragraph is English prose."]
    assert english_paragraphs("用 `get_preset(\"tiny\")` 构建 MiniMind2-small。\n\n$$ y = W x $$") == []
    assert english_paragraphs("| 模型 | layers |\n|---|---|\n| tiny | 2 |") == []
