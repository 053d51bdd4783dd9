"""Debian's Chromium driven by Playwright, for the dashboard's browser tests: one browser per test module.

    def test_page(browser): ...      # the fixture, registered for every test by conftest.py (pytest_plugins)
    from chromium import SCREENSHOTS  # where docs/ screenshots go, when set
    with chromium(netns="gmslurm42", scratch=tmp) as browser: ...   # one inside a network namespace

A browser inside a namespace reaches what listens on that namespace's 127.0.0.1 (a coordinator beside a test
Slurm, tests/slurm_cluster.py): Chromium is started through `nsenter --net`, and Playwright drives it over
the pipe it inherits, which no namespace cuts.

Skips, with the reason, where the playwright package or /usr/bin/chromium is missing (.ci/run installs
Chromium as root). GRADMESH_SCREENSHOTS=DIR makes the tests that take screenshots for docs/ save them there.
"""
from __future__ import annotations

import os
import shlex
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("GRADMESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = os.environ.get("GRADMESH_SCREENSHOTS")


@contextmanager
def chromium(netns: str = "", scratch: Path | None = None):
    """A launched Playwright browser (skips the test where there is none); `netns`: inside that network
    namespace, through a launcher script written into `scratch`."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (it is in the test extra)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it as root)")
    executable = CHROMIUM
    if netns:
        assert scratch is not None, "a browser in a namespace needs a directory for its launcher"
        executable = str(scratch / "chromium-in-netns")
        Path(executable).write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{shlex.quote(netns)} '
                                    f'{shlex.quote(CHROMIUM)} "$@"\n')
        os.chmod(executable, 0o755)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched
