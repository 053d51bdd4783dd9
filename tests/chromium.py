"""Debian's Chromium driven by Playwright, for the dashboard's browser tests: one browser per test module.

    def test_page(browser): ...      # the fixture, registered for every test by conftest.py (pytest_plugins)
    from chromium import SCREENSHOTS  # where docs/ screenshots go, when set

Skips, with the reason, where the playwright package or /usr/bin/chromium is missing (.ci/run installs
Chromium as root). GRADMESH_SCREENSHOTS=DIR makes the tests that take screenshots for docs/ save them there.
"""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("GRADMESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = os.environ.get("GRADMESH_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (it is in the test extra)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it as root)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
