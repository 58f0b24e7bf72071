"""Fixtures for the browser tests: one JupyterLab server and one headless Chromium per test module.

Skipped, with the reason in pytest's summary, where Chromium or Playwright is missing: `make browser`
installs Chromium (Debian's package), `make setup` installs Playwright's Python package (no browser download).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyterlab_driver import REPO, find_chromium, launch_chromium, running_lab

ARTIFACTS = Path(os.environ.get("MINIMIND_EDU_E2E_ARTIFACTS", REPO / "test-artifacts" / "e2e"))


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why_not = find_chromium()
    if path is None:
        pytest.skip(why_not)
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is missing: run `make setup` (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = launch_chromium(p, chromium)
        yield b
        b.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    # The kernel gets the learner's environment, not the test runner's: no MPLBACKEND=Agg, or plt.show() would
    # draw nothing in the browser. MINIMIND_EDU_FAST and OMP_NUM_THREADS pass through from `make test`.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    with running_lab(tmp_path_factory.mktemp("jupyterlab"), env=env) as server:
        yield server


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
