"""The 'itk' backend of `view3d` in a real browser: JupyterLab 4 + headless Chromium, offline (every request
that leaves 127.0.0.1 is aborted), at the server root and under a `base_url`.

Needs the viewer bundle that `abdomen-nb viewer install-itk` puts in the venv; without it the test skips
(fails where the browser tests are required, as for NiiVue)."""
from __future__ import annotations

import json, os, re, secrets, signal, subprocess, sys, time, urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import browser_missing, free_port
from test_view3d_browser import CASE_CODE, _analyse, _notebook


def test_install_itk_is_idempotent_and_explains_missing(tmp_path, capsys):
    from abdomen_nb.viz import itk_assets_installed, itk_assets_dir, main_viewer, ITK_INSTALL_HELP
    assert not itk_assets_installed(tmp_path)                     # an empty prefix has no assets
    assert main_viewer(['status']) in (0, 1)
    assert 'abdomen-nb viewer install-itk' in ITK_INSTALL_HELP     # the message names the command
    if itk_assets_installed():
        d = itk_assets_dir(); stamp = (d / 'itkVtkViewer.js').stat().st_mtime_ns
        assert main_viewer(['install-itk']) == 0                   # second run: nothing fetched, nothing rewritten
        assert 'already installed' in capsys.readouterr().out
        assert (d / 'itkVtkViewer.js').stat().st_mtime_ns == stamp


def test_itk_widget_carries_the_case():
    from abdomen_nb.core import combined_labels
    from abdomen_nb.viz import view3d, itk_display_step
    ns = {}; exec(CASE_CODE, ns); case, shown = ns['case'], ns['SHOWN']
    w = view3d(case, structures=shown, backend='itk', static=False)
    X, Y, Z = case.ct.shape
    ct = np.frombuffer(w.ct, np.int16).reshape(Z, Y, X).transpose(2, 1, 0)
    np.testing.assert_array_equal(ct, np.clip(np.round(case.ct), -32768, 32767).astype(np.int16))
    lab = np.frombuffer(w.labels, np.uint8).reshape(Z, Y, X).transpose(2, 1, 0)
    np.testing.assert_array_equal(lab, combined_labels(case.masks, shown))
    np.testing.assert_allclose(w.meta['spacing'], case.spacing)
    assert w.meta['names'] == shown and w.meta['window'] == [-160.0, 240.0]   # abdomen W400/L40
    # a full-resolution grid (512 x 512 x 300) is downsampled for display, and the note says so
    assert itk_display_step((512, 512, 300)) == 2 and itk_display_step(case.ct.shape) == 1
    w2 = view3d(case, structures=shown, backend='itk', static=False, max_voxels=case.ct.size // 4)
    assert 'Downsampled for display by 2' in w2.note and w2.meta['spacing'][0] == pytest.approx(2 * case.spacing[0])


@contextmanager
def _lab(tmp_path, cells, base_url='/'):
    root = tmp_path / 'root'; root.mkdir()
    (root / 'itk.ipynb').write_text(json.dumps(_notebook(cells)))
    settings = tmp_path / 'lab-settings'
    for ext, name, val in [('apputils-extension', 'notification', {'fetchNews': 'false', 'checkForUpdates': False}),
                           ('notebook-extension', 'tracker', {'autoStartDefaultKernel': True})]:
        (settings / '@jupyterlab' / ext).mkdir(parents=True)
        (settings / '@jupyterlab' / ext / f'{name}.jupyterlab-settings').write_text(json.dumps(val))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'cfg'), 'JUPYTER_RUNTIME_DIR': str(tmp_path / 'rt'),
           'JUPYTERLAB_SETTINGS_DIR': str(settings), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'ws'),
           'IPYTHONDIR': str(tmp_path / 'ipython')}
    env.pop('MPLBACKEND', None)
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
         '--ServerApp.port_retries=0', *(['--allow-root'] if os.geteuid() == 0 else []),
         f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}', f'--ServerApp.base_url={base_url}',
         '--LabApp.news_url=', '--ServerApp.terminals_enabled=False'],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}{base_url.rstrip("/")}'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None: raise RuntimeError((tmp_path / 'lab.log').read_text()[-3000:])
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() - t0 > 120: raise RuntimeError((tmp_path / 'lab.log').read_text()[-3000:])
            time.sleep(0.5)
        yield {'base': base, 'token': token, 'log': tmp_path / 'lab.log'}
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(timeout=15)
        except Exception:
            try: os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        log.close()


@pytest.mark.parametrize('ui, base_url', [('lab', '/'), ('lab', '/jh/user/'), ('notebook7', '/')])
def test_itk_draws_offline_in_jupyterlab(tmp_path, browser, out_dir, ui, base_url):
    "JupyterLab 4 at the root and under a base_url, and Notebook 7 (the `notebook` package on the same server)."

    from abdomen_nb.viz import itk_assets_installed
    if not itk_assets_installed():
        browser_missing("the itk viewer assets are not installed: run `abdomen-nb viewer install-itk`")
    cells = [CASE_CODE, "from abdomen_nb.viz import view3d\nw = view3d(case, structures=SHOWN, backend='itk', height=420)\nw",
             "print('next cell ran', 6 * 7)"]
    tag = ('root' if base_url == '/' else 'base_url') if ui == 'lab' else 'notebook7'
    with _lab(tmp_path, cells, base_url) as lab:
        page = browser.new_page(); page.set_viewport_size({'width': 1400, 'height': 1100})
        page.route(re.compile(r'^https?://(?!127\.0\.0\.1[:/])'), lambda route: route.abort())   # offline
        console = []
        page.on('console', lambda m: console.append(f'{m.type}: {m.text[:300]}'))
        path = 'lab/tree/itk.ipynb' if ui == 'lab' else 'notebooks/itk.ipynb'
        page.goto(f"{lab['base']}/{path}?token={lab['token']}", wait_until='domcontentloaded')
        page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
        if ui == 'lab':
            page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'",
                                   timeout=120_000)
        else:   # Notebook 7 has no execution indicator in a status bar: the Run All loop below retries until a cell runs
            page.wait_for_timeout(3_000)
        try:   # a "Select Kernel" dialog may still come up: accept the preferred kernel
            page.locator('.jp-Dialog .jp-mod-accept').click(timeout=3_000)
        except Exception: pass
        t0 = time.time()
        for _ in range(3 if ui == 'lab' else 8):   # Run > Run All Cells; again if the kernel's websocket was still reconnecting
            page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
            page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
            try: page.wait_for_function("() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[[0-9*]\\]/.test(e.textContent))", timeout=10_000); break
            except Exception: pass
        state = page.locator('[data-itk-state]').first
        try: state.wait_for(state='attached', timeout=90_000)
        except Exception:
            page.screenshot(path=str(out_dir / f'itk_{tag}_failed.png'))
            pytest.fail(f"the itk viewer never started.\nconsole: {console[-15:]}\nlog: {lab['log'].read_text()[-1500:]}")
        assert state.get_attribute('data-itk-state') == 'ready', f"console: {console[-15:]}"
        ms = int(state.get_attribute('data-itk-ms'))
        view = page.locator('.abdomen-itk-viewer').first
        page.evaluate("() => document.querySelector('.abdomen-itk-viewer').scrollIntoView()")
        colours = {f'hue{h}': c for h, c in enumerate([(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255),
                                                       (0, 0, 255), (255, 0, 255)])}
        box = page.evaluate("() => { const r = document.querySelector('.abdomen-itk-viewer').getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; }")
        deadline, stats = time.time() + 60, None
        while time.time() < deadline:
            png = page.screenshot(clip=box, timeout=30_000); stats = _analyse(png, colours)
            if stats['drawn_fraction'] > 0.05 and sum(v >= 40 for v in stats['hits'].values()) >= 2: break
            page.wait_for_timeout(1000)
        first_render = time.time() - t0
        (out_dir / f'itk_{tag}_canvas.png').write_bytes(png)
        try: page.screenshot(path=str(out_dir / f'itk_{tag}_lab.png'), timeout=60_000)   # a record for people, not a check
        except Exception as e: print(f'full-page screenshot skipped: {e}')
        assert page.locator('.abdomen-itk-viewer canvas').count() >= 1
        assert stats['drawn_fraction'] > 0.05, f"the itk canvas is blank: {stats}\nconsole: {console[-10:]}"
        assert stats['distinct_values'] > 20, f"the canvas holds almost no image content: {stats}"
        assert sum(v >= 40 for v in stats['hits'].values()) >= 2, f"label colours missing: {stats}"
        page.wait_for_function("() => document.body.innerText.includes('next cell ran 42')", timeout=60_000)
        print(f"itk first render ({ui} {base_url}): {ms / 1000:.1f} s in the widget, {first_render:.1f} s from Run All; {stats}")
