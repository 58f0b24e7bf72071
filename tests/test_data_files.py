"""The shipped corpus is intact (checksums), keeps its licence obligations, and set-up files agree."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def read_sha256sums() -> dict[str, str]:
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


@pytest.mark.parametrize("name", sorted(read_sha256sums()))
def test_checksum(name):
    digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert digest == read_sha256sums()[name], f"data/{name} differs from data/SHA256SUMS: re-copy it"


def test_every_data_file_is_checksummed():
    on_disk = {
        p.relative_to(DATA).as_posix()
        for p in DATA.rglob("*")
        if p.is_file() and p.name not in {"SHA256SUMS", "SOURCES.md"}
    }
    assert on_disk == set(read_sha256sums()), "add new data files to data/SHA256SUMS (and SOURCES.md)"


def test_sources_keep_the_cdla_obligation():
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    tinystories_rows = [line for line in sources.splitlines() if line.startswith("| `en/tinystories")]
    assert len(tinystories_rows) == 3
    assert all("CDLA-Sharing-1.0" in row for row in tinystories_rows)
    # The licence text must ship beside the data, and SOURCES.md must say what it asks.
    assert "licenses/CDLA-Sharing-1.0.txt" in sources
    licence = (DATA / "licenses" / "CDLA-Sharing-1.0.txt").read_text(encoding="utf-8")
    assert licence.startswith("Community Data License Agreement – Sharing – Version 1.0")
    obligations = sources[sources.index("Obligations:"):]
    assert "CDLA-Sharing-1.0" in obligations and "attribution" in obligations
    assert "stay under that licence" in obligations  # share-alike: derived data keeps CDLA-Sharing


def test_sources_keep_the_cc_by_obligation():
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    rows = [line for line in sources.splitlines() if line.startswith("| `zh/stories")]
    assert len(rows) == 2 and all("CC-BY-4.0" in row for row in rows) and "joe-chiu/TinyChineseStories" in rows[0]
    assert "Modified from the original" in rows[0]  # CC-BY asks to say that the text was changed
    obligations = sources[sources.index("Obligations:"):]
    assert "licenses/CC-BY-4.0.txt" in obligations and "attribution" in obligations
    licence = (DATA / "licenses" / "CC-BY-4.0.txt").read_text(encoding="utf-8")
    assert licence.startswith("Creative Commons Attribution 4.0 International")


def test_every_listed_file_is_described_in_sources():
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    for name in read_sha256sums():
        if name.startswith("licenses/"):
            continue
        # Rows list a folder's files as `minimind/tokenizer.json`, `tokenizer_config.json`.
        assert f"`{name}`" in sources or f"`{Path(name).name}`" in sources, f"{name} missing from SOURCES.md"


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _conda_names(environment_yml: str) -> set[str]:
    names = set()
    for line in environment_yml.splitlines():
        match = re.match(r"\s*-\s+([A-Za-z0-9][A-Za-z0-9_.\-]*)", line)
        if match:
            names.add(_requirement_name(match.group(1)))
    return names


# conda calls some packages differently from PyPI.
CONDA_NAME = {"torch": "pytorch"}


def test_environment_yml_names_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert {"torch", "tokenizers", "numpy"} <= runtime
    conda = _conda_names((ROOT / "environment.yml").read_text(encoding="utf-8"))
    missing = sorted(name for name in runtime if CONDA_NAME.get(name, name) not in conda)
    assert not missing, f"environment.yml lacks runtime dependencies of pyproject.toml: {missing}"


def test_conda_name_parsing_catches_a_missing_dependency():
    conda = _conda_names("dependencies:\n  - python=3.11\n  - pytorch>=2.4\n  - pip:\n      - -e .\n")
    assert conda == {"python", "pytorch", "pip"}
    assert "tokenizers" not in conda
