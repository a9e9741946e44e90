"""The 'itk' backend of `view3d` in a real browser: JupyterLab 4 + headless Chromium, offline (every request
that leaves 127.0.0.1 is aborted), at the server root and under a `base_url`.

Needs the viewer bundle that `abdomen-nb viewer install-itk` puts in the venv; without it the test skips
(fails where the browser tests are required, as for NiiVue)."""
from __future__ import annotations

import re, time

import numpy as np
import pytest

from conftest import browser_missing
from lab_browser import ANY_HUE, grey_levels, label_change, lab_server, settled, open_and_run_all, wait_drawn
from test_view3d_browser import CASE_CODE


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
    assert (w.view_mode, w.color_map) == ('ZPlane', 'Grayscale')                  # opens on the axial slice, in grey
    assert view3d(case, structures=shown, backend='itk', static=False, view='volume').view_mode == 'Volume'
    with pytest.raises(ValueError, match="Unknown itk view 'oblique'"):
        view3d(case, structures=shown, backend='itk', static=False, view='oblique')
    # a full-resolution grid (512 x 512 x 300) is downsampled for display, and the note says so
    assert itk_display_step((512, 512, 300)) == 2 and itk_display_step(case.ct.shape) == 1
    w2 = view3d(case, structures=shown, backend='itk', static=False, max_voxels=case.ct.size // 4)
    assert 'Downsampled for display by 2' in w2.note and w2.meta['spacing'][0] == pytest.approx(2 * case.spacing[0])


@pytest.mark.parametrize('ui, base_url', [('lab', '/'), ('lab', '/jh/user/'), ('notebook7', '/')])
def test_itk_draws_offline_in_jupyterlab(tmp_path, browser, out_dir, ui, base_url):
    "JupyterLab 4 at the root and under a base_url, and Notebook 7 (the `notebook` package on the same server)."

    from abdomen_nb.viz import itk_assets_installed
    if not itk_assets_installed():
        browser_missing("the itk viewer assets are not installed: run `abdomen-nb viewer install-itk`")
    cells = [CASE_CODE, "from abdomen_nb.viz import view3d\nw = view3d(case, structures=SHOWN, backend='itk', height=420)\nw",
             "print('next cell ran', 6 * 7)"]
    tag = ('root' if base_url == '/' else 'base_url') if ui == 'lab' else 'notebook7'
    with lab_server(tmp_path, cells, base_url) as lab:
        page = browser.new_page(); page.set_viewport_size({'width': 1400, 'height': 1100})
        page.route(re.compile(r'^https?://(?!127\.0\.0\.1[:/])'), lambda route: route.abort())   # offline
        console = []
        page.on('console', lambda m: console.append(f'{m.type}: {m.text[:300]}'))
        t0 = time.time()
        open_and_run_all(page, lab, ui)
        state = page.locator('[data-itk-state]').first
        try: state.wait_for(state='attached', timeout=90_000)
        except Exception:
            page.screenshot(path=str(out_dir / f'itk_{tag}_failed.png'))
            pytest.fail(f"the itk viewer never started.\nconsole: {console[-15:]}\nlog: {lab['log'].read_text()[-1500:]}")
        assert state.get_attribute('data-itk-state') == 'ready', f"console: {console[-15:]}"
        ms = int(state.get_attribute('data-itk-ms'))
        page.evaluate("() => document.querySelector('.abdomen-itk-viewer').scrollIntoView()")
        box = page.evaluate("() => { const r = document.querySelector('.abdomen-itk-viewer').getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; }")
        shoot = lambda: page.screenshot(clip=box, timeout=30_000)
        png, stats, _ = wait_drawn(shoot, ANY_HUE, 2, 60, page.wait_for_timeout)
        first_render = time.time() - t0
        png = settled(shoot, page.wait_for_timeout)
        (out_dir / f'itk_{tag}_canvas.png').write_bytes(png)
        try: page.screenshot(path=str(out_dir / f'itk_{tag}_lab.png'), timeout=60_000)   # a record for people, not a check
        except Exception as e: print(f'full-page screenshot skipped: {e}')
        assert page.locator('.abdomen-itk-viewer canvas').count() >= 1
        assert stats['drawn_fraction'] > 0.05, f"the itk canvas is blank: {stats}\nconsole: {console[-10:]}"
        assert stats['distinct_values'] > 20, f"the canvas holds almost no image content: {stats}"
        assert sum(v >= 40 for v in stats['hits'].values()) >= 2, f"label colours missing: {stats}"
        # the colours are the label overlay's: blend it out and they go (leaving a grey CT slice), blend it back
        # and they return, in one hue per structure on screen (itk-vtk-viewer's own label table)
        blend = lambda b: page.evaluate(f"() => document.querySelector('[data-itk-state]').itkViewer.setLabelImageBlend({b})")
        blend(0); page.wait_for_timeout(2000)
        png_off = shoot(); (out_dir / f'itk_{tag}_labels_off.png').write_bytes(png_off)
        blend(0.5); page.wait_for_timeout(2000)
        png_back = shoot()
        gone, back = label_change(png, png_off), label_change(png_back, png_off)
        print(f"labels: {gone['added_fraction']:.4f} of the viewer coloured by them ({gone['hues']}), "
              f"{back['added_fraction']:.4f} after blending back; grey levels of the CT slice: {grey_levels(png_off)}")
        assert gone['added_fraction'] > 0.005 and len(gone['hues']) >= 2, f"no label overlay drawn: {gone}"
        assert back['added_fraction'] > 0.8 * gone['added_fraction'], f"blend 0.5 did not bring the labels back: {back}"
        assert grey_levels(png_off) > 100, "no grey CT slice under the labels"
        page.wait_for_function("() => document.body.innerText.includes('next cell ran 42')", timeout=60_000)
        print(f"itk first render ({ui} {base_url}): {ms / 1000:.1f} s in the widget, {first_render:.1f} s from Run All; {stats}")
