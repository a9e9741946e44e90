"""`viz.view3d` end to end: the widget object carries the right volumes, and the viewer really draws in
JupyterLab. The browser test starts JupyterLab on 127.0.0.1 (random free port, a token, a temporary root
folder holding one notebook that calls `view3d`), drives it with Playwright and headless Chromium (Run >
Run All Cells), waits for NiiVue's WebGL canvas and reads its pixels: the canvas must not be blank and the
label overlay colours from `viz.STRUCTURE_COLOURS` must be on it. Screenshots: tests/_out/view3d_*.png."""
from __future__ import annotations

import gzip, time

import numpy as np
import pytest

from lab_browser import analyse, lab_server, open_and_run_all, wait_drawn

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
VIEW_CELL = 'from abdomen_nb.viz import view3d\nw = view3d(case, structures=SHOWN, height=420)\nw'


def test_view3d_draws_in_jupyterlab(tmp_path, browser, out_dir):
    from abdomen_nb.viz import STRUCTURE_COLOURS
    case, shown = _case()
    colours = {n: STRUCTURE_COLOURS[n] for n in shown}
    t0 = time.time()
    (out_dir / 'view3d_lab_failed.png').unlink(missing_ok=True)
    with lab_server(tmp_path, [CASE_CODE, VIEW_CELL]) as lab:
        page = browser.new_page()
        page.set_viewport_size({'width': 1400, 'height': 1000})
        console = []
        page.on('console', lambda m: console.append(f'{m.type}: {m.text[:300]}') if m.type in ('error', 'warning', 'log') else None)
        open_and_run_all(page, lab)
        canvas = page.locator('.jp-OutputArea-output canvas').first
        try: canvas.wait_for(state='attached', timeout=120_000)
        except Exception:
            page.screenshot(path=str(out_dir / 'view3d_lab_failed.png'))
            outs = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => (e.getAttribute('data-mime-type') || '') + ': ' + e.innerText.slice(0, 300))")
            pytest.fail(f"no NiiVue canvas appeared after Run All (screenshot tests/_out/view3d_lab_failed.png).\n"
                        f"outputs: {outs}\nbrowser console: {console[-15:]}\nserver log: {lab['log'].read_text()[-2000:]}")
        canvas.scroll_into_view_if_needed()
        # NiiVue loads the NIfTI bytes asynchronously: poll the canvas pixels until the overlay is drawn
        png, stats, _ = wait_drawn(canvas.screenshot, colours, min(2, len(colours)), 90, page.wait_for_timeout)
        (out_dir / 'view3d_canvas.png').write_bytes(png)
        page.screenshot(path=str(out_dir / 'view3d_lab.png'))
        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        assert not any('Traceback' in e or 'Error' in e for e in errors), f"the notebook raised: {errors}"
        assert stats['drawn_fraction'] > 0.05, f"the NiiVue canvas is blank: {stats}\nbrowser console: {console[-10:]}"
        assert stats['distinct_values'] > 20, f"the canvas holds almost no image content: {stats}"
        seen = [n for n, v in stats['hits'].items() if v >= 40]
        assert len(seen) >= min(2, len(colours)), (f"overlay colours missing on the canvas: {stats}\n"
                                                  f"browser console: {console[-10:]}")
        assert 'liver' not in colours or 'liver' in seen, f"the liver overlay is not drawn: {stats}"
        # the static figure view3d leaves for the docs is there too
        assert page.locator('.jp-OutputArea-output img').count() >= 1
        print(f"view3d rendered in JupyterLab in {time.time() - t0:.1f} s: {stats}")
