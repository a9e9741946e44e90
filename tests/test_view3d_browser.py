"""`viz.view3d` end to end: the widget object carries the right volumes, and the viewer really draws in
JupyterLab. The browser test starts JupyterLab on 127.0.0.1 (random free port, a token, a temporary root
folder holding one notebook that calls `view3d`), drives it with Playwright and headless Chromium (Run >
Run All Cells), waits for NiiVue's WebGL canvas and reads its pixels: the canvas must not be blank and the
label overlay colours from `viz.STRUCTURE_COLOURS` must be on it. Screenshots: tests/_out/view3d_*.png."""
from __future__ import annotations

import colorsys, gzip, io, json, os, secrets, signal, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port

# The case both tests use: the phantom's first case, and four organs with well-separated colours.
CASE_CODE = '''\
from abdomen_nb.phantom import make_case
case = make_case(0)
SHOWN = [s for s in ['liver', 'spleen', 'kidney_left', 'kidney_right'] if s in case.masks]
'''


def _case():
    ns = {}
    exec(CASE_CODE, ns)
    return ns['case'], ns['SHOWN']


# ----------------------------------------------------------------------------- the widget object
def test_view3d_widget_carries_volume_labels_and_spacing():
    import nibabel as nib
    from abdomen_nb.core import combined_labels
    from abdomen_nb.viz import view3d, structure_colour, VIEW3D_BACKENDS
    case, shown = _case()
    nv = view3d(case, structures=shown, static=False)
    assert type(nv).__name__ == 'NiiVue' and VIEW3D_BACKENDS[0] == 'niivue'
    assert len(nv.volumes) == 2
    ct_vol, lab_vol = nv.volumes
    assert ct_vol.name.endswith('.nii.gz') and lab_vol.name.endswith('.nii.gz')
    ct_img = nib.Nifti1Image.from_bytes(gzip.decompress(ct_vol.data))
    lab_img = nib.Nifti1Image.from_bytes(gzip.decompress(lab_vol.data))
    # the volume: the CT in HU (int16), on the case's grid and affine -> the true spacing
    np.testing.assert_allclose(ct_img.header.get_zooms()[:3], case.spacing, rtol=1e-6)
    np.testing.assert_allclose(ct_img.affine, case.affine, atol=1e-5)
    assert ct_img.shape == case.shape
    np.testing.assert_array_equal(np.asarray(ct_img.dataobj), np.round(case.ct).astype(np.int16))
    # the overlay: one label per structure, same grid, and the lookup table of STRUCTURE_COLOURS
    np.testing.assert_allclose(lab_img.affine, case.affine, atol=1e-5)
    labels = np.asarray(lab_img.dataobj)
    np.testing.assert_array_equal(labels, combined_labels(case.masks, shown))
    lut = nv.volumes[1].colormap_label
    assert lut.labels == ['background', *shown]
    assert lut.lut[3] == 0                      # background transparent
    for k, name in enumerate(shown, start=1):
        assert lut.lut[4 * k:4 * k + 3] == [round(255 * c) for c in structure_colour(name)], name
        assert lut.lut[4 * k + 3] == 255
        assert (labels == k).sum() > 0 or not case.masks[name].any()
    # the window on the CT and the display convention
    assert (ct_vol.cal_min, ct_vol.cal_max) == (-160.0, 240.0)
    assert nv.opts.is_radiological_convention and nv.opts.sagittal_nose_left   # as the static figures


def test_view3d_itk_backend_names_its_install_command():
    from abdomen_nb.viz import view3d
    case, shown = _case()
    w = view3d(case, structures=shown, backend='itk', static=False)
    # shown in the page when neither the local assets nor the CDN can be reached
    assert 'abdomen-nb viewer install-itk' in w.missing_message
    assert "abdomen_nb[itk]" not in w.missing_message     # no removed extra named


# ----------------------------------------------------------------------------- JupyterLab + Chromium
def _notebook(cells):
    return {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {},
                       'outputs': [], 'source': src} for i, src in enumerate(cells)],
            'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'},
                         'language_info': {'name': 'python'}},
            'nbformat': 4, 'nbformat_minor': 5}


@pytest.fixture
def lab(tmp_path):
    "JupyterLab on 127.0.0.1:<free port> with a token, rooted in a temp folder holding view3d.ipynb."
    root = tmp_path / 'root'; root.mkdir()
    cells = [CASE_CODE,
             'from abdomen_nb.viz import view3d\nw = view3d(case, structures=SHOWN, height=420)\nw']
    (root / 'view3d.ipynb').write_text(json.dumps(_notebook(cells)))
    settings = tmp_path / 'lab-settings'
    (settings / '@jupyterlab' / 'apputils-extension').mkdir(parents=True)
    (settings / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings').write_text(
        json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    (settings / '@jupyterlab' / 'notebook-extension').mkdir(parents=True)
    (settings / '@jupyterlab' / 'notebook-extension' / 'tracker.jupyterlab-settings').write_text(
        json.dumps({'autoStartDefaultKernel': True}))   # no "Select Kernel" dialog
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'cfg'), 'JUPYTER_RUNTIME_DIR': str(tmp_path / 'rt'),
           'JUPYTERLAB_SETTINGS_DIR': str(settings), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'ws'),
           'IPYTHONDIR': str(tmp_path / 'ipython')}
    env.pop('MPLBACKEND', None)   # the kernel should use the inline backend, as a user's would
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
         '--ServerApp.port_retries=0', *(['--allow-root'] if os.geteuid() == 0 else []), f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
         '--LabApp.news_url=', '--ServerApp.terminals_enabled=False', '--LabServerApp.collaborative=False'],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() - t0 > 120:
                raise RuntimeError(f"JupyterLab did not answer in 120 s:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {'base': base, 'token': token, 'log': tmp_path / 'lab.log'}
    finally:
        try:
            req = urllib.request.Request(f'{base}/api/shutdown?token={token}', method='POST', data=b'')
            urllib.request.urlopen(req, timeout=5)
            proc.wait(timeout=20)
        except Exception:
            pass
        if proc.poll() is None:           # our own server and its kernel (its own process group)
            try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(timeout=10)
            except Exception:
                try: os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError: pass
        log.close()


def _hue_deg(rgb):
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return 360 * h, s, v


def _colour_hits(img: np.ndarray, rgb, tol_deg=14, min_sat=0.2) -> int:
    "Pixels whose hue is within `tol_deg` of the colour's hue (saturated enough not to be grey CT)."
    from matplotlib.colors import rgb_to_hsv
    hsv = rgb_to_hsv(img[..., :3] / 255.0)
    target, _, _ = _hue_deg(rgb)
    d = np.abs(hsv[..., 0] * 360 - target); d = np.minimum(d, 360 - d)
    return int(((d < tol_deg) & (hsv[..., 1] > min_sat) & (hsv[..., 2] > 0.15)).sum())


def _analyse(png: bytes, colours: dict) -> dict:
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(np.int16)
    drawn = (img.max(-1) > 24).mean()                # background is black (back_color)
    hits = {n: _colour_hits(img, c) for n, c in colours.items()}
    return {'shape': img.shape, 'drawn_fraction': float(drawn), 'hits': hits,
            'distinct_values': int(len(np.unique(img.reshape(-1, 3)[::7], axis=0)))}


def test_view3d_draws_in_jupyterlab(lab, browser, out_dir):
    from abdomen_nb.viz import STRUCTURE_COLOURS
    case, shown = _case()
    colours = {n: STRUCTURE_COLOURS[n] for n in shown}
    t0 = time.time()
    (out_dir / 'view3d_lab_failed.png').unlink(missing_ok=True)
    page = browser.new_page()
    page.set_viewport_size({'width': 1400, 'height': 1000})
    console = []
    page.on('console', lambda m: console.append(f'{m.type}: {m.text[:300]}') if m.type in ('error', 'warning', 'log') else None)
    page.goto(f"{lab['base']}/lab/tree/view3d.ipynb?token={lab['token']}", wait_until='domcontentloaded')
    # the notebook is open and its kernel is idle
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
    page.wait_for_function("""() => {
        const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
        if (ind && ind.getAttribute('data-status') === 'idle') return true;
        const sb = document.querySelector('#jp-main-statusbar');
        return !!sb && /\\bIdle\\b/.test(sb.textContent);
    }""", timeout=120_000)
    try:   # a "Select Kernel" dialog may still come up: accept the preferred kernel
        page.locator('.jp-Dialog .jp-mod-accept').click(timeout=3_000)
        page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'",
                               timeout=120_000)
    except Exception: pass
    # Run > Run All Cells
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    canvas = page.locator('.jp-OutputArea-output canvas').first
    try: canvas.wait_for(state='attached', timeout=120_000)
    except Exception:
        page.screenshot(path=str(out_dir / 'view3d_lab_failed.png'))
        outs = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => (e.getAttribute('data-mime-type') || '') + ': ' + e.innerText.slice(0, 300))")
        pytest.fail(f"no NiiVue canvas appeared after Run All (screenshot tests/_out/view3d_lab_failed.png).\n"
                    f"outputs: {outs}\nbrowser console: {console[-15:]}\nserver log: {lab['log'].read_text()[-2000:]}")
    canvas.scroll_into_view_if_needed()
    # NiiVue loads the NIfTI bytes asynchronously: poll the canvas pixels until the overlay is drawn
    deadline, stats = time.time() + 90, None
    while time.time() < deadline:
        png = canvas.screenshot()
        stats = _analyse(png, colours)
        if stats['drawn_fraction'] > 0.05 and sum(v >= 40 for v in stats['hits'].values()) >= min(2, len(colours)):
            break
        page.wait_for_timeout(1000)
    (out_dir / 'view3d_canvas.png').write_bytes(png)
    page.screenshot(path=str(out_dir / 'view3d_lab.png'))
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    assert not any('Traceback' in e or 'Error' in e for e in errors), f"the notebook raised: {errors}"
    assert stats is not None
    assert stats['drawn_fraction'] > 0.05, f"the NiiVue canvas is blank: {stats}\nbrowser console: {console[-10:]}"
    assert stats['distinct_values'] > 20, f"the canvas holds almost no image content: {stats}"
    seen = [n for n, v in stats['hits'].items() if v >= 40]
    assert len(seen) >= min(2, len(colours)), (f"overlay colours missing on the canvas: {stats}\n"
                                              f"browser console: {console[-10:]}")
    assert 'liver' not in colours or 'liver' in seen, f"the liver overlay is not drawn: {stats}"
    # the static figure view3d leaves for the docs is there too
    assert page.locator('.jp-OutputArea-output img').count() >= 1
    print(f"view3d rendered in JupyterLab in {time.time() - t0:.1f} s: {stats}")
