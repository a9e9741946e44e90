"""Shared fixtures: the repository root, the output folder for screenshots, headless Chromium.

The browser checks use the system Chromium (Debian's `chromium` package, installed by `make browser`,
which `make test` runs first) through Playwright's Python API; they never download a browser. Without
Chromium they skip with a message that says how to get it; with ABDOMEN_NB_REQUIRE_BROWSER=1 (set by
.ci/run) a missing browser is a failure instead, so CI always runs them.
"""
from __future__ import annotations

import os, shutil, socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'tests' / '_out'
CHROMIUM_CANDIDATES = ('/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/lib/chromium/chromium')
# WebGL must work (NiiVue draws with WebGL2): SwiftShader through ANGLE, *not* --use-gl=swiftshader.
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--enable-unsafe-swiftshader',
                 '--disable-dev-shm-usage', '--disable-default-apps', '--disable-extensions',
                 '--mute-audio', '--no-default-browser-check', '--password-store=basic']
NO_CHROMIUM = ("Headless Chromium is needed for the browser checks but was not found at {where}. Get it with "
               "`make browser` (runs `apt-get install -y chromium chromium-driver`; `make test` does this for you), "
               "or install Chromium another way and point ABDOMEN_NB_CHROMIUM at its binary. Playwright's own "
               "browser download is not used.")
REQUIRE_BROWSER = 'ABDOMEN_NB_REQUIRE_BROWSER'   # =1: a missing browser fails the run instead of skipping (CI)


def browser_missing(message: str):
    "Skip the browser check with `message`, or fail it where ABDOMEN_NB_REQUIRE_BROWSER=1 (CI)."
    if os.environ.get(REQUIRE_BROWSER, '').strip().lower() in ('1', 'true', 'yes'):
        pytest.fail(f"{message} ({REQUIRE_BROWSER}=1: browser checks are required here)", pytrace=False)
    pytest.skip(message)


def find_chromium() -> str | None:
    "The Chromium binary: $ABDOMEN_NB_CHROMIUM, the Debian paths, or `chromium` on PATH."
    env = os.environ.get('ABDOMEN_NB_CHROMIUM')
    for p in (env, *CHROMIUM_CANDIDATES, shutil.which('chromium'), shutil.which('chromium-browser')):
        if p and os.path.isfile(p) and os.access(p, os.X_OK): return p
    return None


@pytest.fixture(scope='session')
def chromium_path() -> str:
    p = find_chromium()
    if p is None: browser_missing(NO_CHROMIUM.format(where=', '.join(CHROMIUM_CANDIDATES)))
    return p


@pytest.fixture(scope='session')
def out_dir() -> Path:
    "tests/_out/: screenshots and other artefacts a person may want to look at (ignored by git)."
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture
def browser(chromium_path, tmp_path):
    "A fresh headless Chromium context (own, empty user-data-dir) driven by Playwright; closed afterwards."
    try: from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("playwright (the Python package) is missing: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / 'chromium-profile'), executable_path=chromium_path, headless=True,
            args=CHROMIUM_ARGS, viewport={'width': 1280, 'height': 900}, device_scale_factor=1)
        try: yield ctx
        finally: ctx.close()


def free_port() -> int:
    "A TCP port on 127.0.0.1 that is free right now."
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
