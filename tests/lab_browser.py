"""One place for what the browser tests and `benchmarks/bench_view3d.py` share: a JupyterLab server on
127.0.0.1 rooted in a temporary folder with one notebook, opening that notebook in Playwright and running
all its cells, and reading a canvas screenshot's pixels (drawn fraction, hits of given label colours).

Not a test module (no `test_` prefix): imported by tests/test_view3d_browser.py, tests/test_itk_browser.py
and the benchmark."""
from __future__ import annotations

import colorsys, io, json, os, secrets, signal, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from conftest import free_port

NOTEBOOK = 'case.ipynb'

# itk-vtk-viewer colours labels with its own lookup table, not `viz.STRUCTURE_COLOURS`: look for any of six hues
ANY_HUE = {f'hue{h}': c for h, c in enumerate([(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255),
                                               (0, 0, 255), (255, 0, 255)])}


def notebook(cells: list[str]) -> dict:
    "An nbformat 4 notebook of code cells, no outputs, the default Python 3 kernel."
    return {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {},
                       'outputs': [], 'source': src} for i, src in enumerate(cells)],
            'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'},
                         'language_info': {'name': 'python'}},
            'nbformat': 4, 'nbformat_minor': 5}


@contextmanager
def lab_server(tmp_path: Path, cells: list[str], base_url: str = '/'):
    """JupyterLab on 127.0.0.1:<free port> with a token and its own config, settings and runtime folders,
    rooted in `tmp_path/root` holding `case.ipynb` made of `cells`. Yields base URL, token, log path."""
    root = tmp_path / 'root'; root.mkdir()
    (root / NOTEBOOK).write_text(json.dumps(notebook(cells)))
    settings = tmp_path / 'lab-settings'
    for ext, name, val in [('apputils-extension', 'notification', {'fetchNews': 'false', 'checkForUpdates': False}),
                           ('notebook-extension', 'tracker', {'autoStartDefaultKernel': True})]:   # no kernel dialog
        (settings / '@jupyterlab' / ext).mkdir(parents=True)
        (settings / '@jupyterlab' / ext / f'{name}.jupyterlab-settings').write_text(json.dumps(val))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'cfg'), 'JUPYTER_RUNTIME_DIR': str(tmp_path / 'rt'),
           'JUPYTERLAB_SETTINGS_DIR': str(settings), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'ws'),
           'IPYTHONDIR': str(tmp_path / 'ipython')}
    env.pop('MPLBACKEND', None)   # the kernel uses the inline backend, as a user's would
    logp = tmp_path / 'lab.log'
    log = open(logp, 'w')
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
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{logp.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() - t0 > 120: raise RuntimeError(f"JupyterLab did not answer in 120 s:\n{logp.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {'base': base, 'token': token, 'log': logp}
    finally:   # our own server and its kernel (its own process group)
        try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(timeout=15)
        except Exception:
            try: os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        log.close()


def open_and_run_all(page, lab: dict, ui: str = 'lab'):
    """Open the server's notebook in `page` ('lab': JupyterLab, 'notebook7': Notebook 7 on the same server),
    wait for the kernel, and Run > Run All Cells; again if no cell started (the kernel's websocket may still
    have been connecting). Returns when the first cell has started."""
    path = f'lab/tree/{NOTEBOOK}' if ui == 'lab' else f'notebooks/{NOTEBOOK}'
    page.goto(f"{lab['base']}/{path}?token={lab['token']}", wait_until='domcontentloaded')
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
    if ui == 'lab':
        page.wait_for_function("""() => {
            const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
            if (ind && ind.getAttribute('data-status') === 'idle') return true;
            const sb = document.querySelector('#jp-main-statusbar');
            return !!sb && /\\bIdle\\b/.test(sb.textContent);
        }""", timeout=120_000)
    else:   # Notebook 7 has no execution indicator in a status bar: the loop below retries until a cell runs
        page.wait_for_timeout(3_000)
    try:   # a "Select Kernel" dialog may still come up: accept the preferred kernel
        page.locator('.jp-Dialog .jp-mod-accept').click(timeout=3_000)
    except Exception: pass
    for _ in range(3 if ui == 'lab' else 8):
        page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        try:
            page.wait_for_function("() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[[0-9*]\\]/.test(e.textContent))",
                                   timeout=10_000)
            return
        except Exception: pass
    raise RuntimeError(f'Run All never started a cell; server log:\n{lab["log"].read_text()[-2000:]}')


def _hue_deg(rgb):
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return 360 * h, s, v


def colour_hits(img: np.ndarray, rgb, tol_deg=14, min_sat=0.2) -> int:
    "Pixels whose hue is within `tol_deg` of the colour's hue (saturated enough not to be grey CT)."
    from matplotlib.colors import rgb_to_hsv
    hsv = rgb_to_hsv(img[..., :3] / 255.0)
    target, _, _ = _hue_deg(rgb)
    d = np.abs(hsv[..., 0] * 360 - target); d = np.minimum(d, 360 - d)
    return int(((d < tol_deg) & (hsv[..., 1] > min_sat) & (hsv[..., 2] > 0.15)).sum())


def saturated(img: np.ndarray, min_sat=0.2) -> np.ndarray:
    "Pixels with colour in them (any hue): grey CT and black background are not."
    from matplotlib.colors import rgb_to_hsv
    hsv = rgb_to_hsv(img[..., :3] / 255.0)
    return (hsv[..., 1] > min_sat) & (hsv[..., 2] > 0.15)


def analyse(png: bytes, colours: dict) -> dict:
    """Pixel statistics of a screenshot: share drawn (not black), hits per named colour, and how many distinct
    values (a blank or flat canvas has few)."""
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(np.int16)
    return {'shape': img.shape, 'drawn_fraction': float((img.max(-1) > 24).mean()),
            'hits': {n: colour_hits(img, c) for n, c in colours.items()},
            'distinct_values': int(len(np.unique(img.reshape(-1, 3)[::7], axis=0)))}


def wait_drawn(shoot, colours: dict, need: int, timeout_s: float, wait_ms, min_hits: int = 40):
    """Screenshot with `shoot()` once a second until more than 5 % is drawn and at least `need` of `colours`
    have `min_hits` pixels, or `timeout_s` passes. Returns (png, stats, drawn_in_time)."""
    deadline, png, stats = time.time() + timeout_s, None, None
    while time.time() < deadline:
        png = shoot(); stats = analyse(png, colours)
        if stats['drawn_fraction'] > 0.05 and sum(v >= min_hits for v in stats['hits'].values()) >= need:
            return png, stats, True
        wait_ms(1000)
    return png, stats, False


def grey_levels(png: bytes, min_count: int = 50) -> int:
    "How many grey levels (R = G = B within 3) cover at least `min_count` pixels: a drawn CT slice has many, UI chrome few."
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(np.int16)
    grey = (img.max(-1) - img.min(-1)) <= 3
    return int((np.bincount(img[..., 0][grey], minlength=256) >= min_count).sum())


def label_change(png_on: bytes, png_off: bytes, colours: dict = ANY_HUE, min_hits: int = 40, min_sat=0.1) -> dict:
    """What the label overlay adds: pixels coloured with it and grey without it (share of the picture), and the
    hues among them with at least `min_hits` pixels (one per structure colour on screen)."""
    from PIL import Image
    on, off = (np.asarray(Image.open(io.BytesIO(p)).convert('RGB')).astype(np.int16) for p in (png_on, png_off))
    added = saturated(on, min_sat) & ~saturated(off, min_sat)   # a blended label on grey is pale: a lower bar than `colour_hits`'
    hits = {n: colour_hits(np.where(added[..., None], on, 0), c, min_sat=min_sat) for n, c in colours.items()}
    return {'added_fraction': float(added.mean()), 'hues': sorted(n for n, v in hits.items() if v >= min_hits), 'hits': hits}


def settled(shoot, wait_ms, timeout_s: float = 30, same: int = 3) -> bytes:
    "Screenshot once a second until `same` in a row are identical (the viewer has finished drawing); the last one."
    deadline, last, run = time.time() + timeout_s, shoot(), 1
    while time.time() < deadline and run < same:
        wait_ms(1000); png = shoot()
        run = run + 1 if png == last else 1
        last = png
    return last
