"""Benchmark: the first render of `view3d` in JupyterLab 4, NiiVue against itk-vtk-viewer, on the mini phantom
and on a full-resolution case folder in the AbdomenAtlas 3.0 layout (issue 19).

What is timed is what a user sees: a notebook whose first cell loads the case (from files for the
full-resolution folder) and whose second cell calls `view3d(case, structures=..., backend=B)`. The clock starts
when the first cell has printed that the case is loaded and stops when the viewer's canvas, screenshotted
once a second, is drawn (more than 5 % of its pixels non-black) and shows label colours (the table colours for
NiiVue; for itk-vtk-viewer, whose label lookup table is its own and whose panel has colours of its own, the
widget's `data-itk-state="ready"`, set once the volumes are loaded, the settings taken and the camera turned to
the axial plane, then at least two distinct hues). So the figure
covers the second cell: packing and sending the volumes to the browser, the viewer's start and its first
frame. Headless Chromium (WebGL2 through SwiftShader, no GPU), offline (every request leaving 127.0.0.1 is
aborted), a fresh JupyterLab server and browser profile per run; median of --runs.

The full-resolution case (512 x 512 x 300) is the one `bench_report.py` writes (built here if missing); the
itk backend downsamples it by 2 per axis for display (above `ITK_MAX_VOXELS`) and says so under the viewer.

    .venv/bin/python benchmarks/bench_view3d.py [--runs 3] [--cases mini full] [--backends niivue itk]
"""
from __future__ import annotations

import argparse, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests')); sys.path.insert(0, str(ROOT / 'benchmarks'))

SHOWN = "SHOWN = [s for s in ['liver', 'spleen', 'kidney_left', 'kidney_right'] if s in case.masks]\n"
LOAD = {
    'mini': "from abdomen_nb.phantom import make_case\ncase = make_case(0)\n",
    'full': "from abdomen_nb.core import read_case\ncase = read_case({folder!r})\n",
}
SELECTOR = {'niivue': '.jp-OutputArea-output canvas', 'itk': '.abdomen-itk-viewer canvas'}


def one(case_key: str, backend: str, folder: Path, chromium: str, tmp: Path) -> dict:
    "One fresh server + browser: seconds from 'case loaded' to a drawn canvas with label colours."
    from playwright.sync_api import sync_playwright
    from conftest import CHROMIUM_ARGS
    from lab_browser import ANY_HUE, lab_server, open_and_run_all, wait_drawn
    from abdomen_nb.viz import STRUCTURE_COLOURS
    cells = [LOAD[case_key].format(folder=str(folder)) + SHOWN + "print('case loaded', case.ct.shape)",
             f"from abdomen_nb.viz import view3d\nw = view3d(case, structures=SHOWN, backend={backend!r}, height=420)\nw",
             "print('next cell ran', 6 * 7)"]
    colours = ({n: STRUCTURE_COLOURS[n] for n in ('liver', 'spleen', 'kidney_left', 'kidney_right')}
               if backend == 'niivue' else ANY_HUE)   # itk-vtk-viewer colours labels with its own table
    with lab_server(tmp, cells) as lab, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp / 'profile'), executable_path=chromium, headless=True,
                                                    args=CHROMIUM_ARGS, viewport={'width': 1400, 'height': 1100})
        try:
            page = ctx.new_page()
            page.route('**/*', lambda r: r.abort() if not r.request.url.startswith('http://127.0.0.1') else r.continue_())
            open_and_run_all(page, lab)
            page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.innerText.includes('case loaded'))",
                                   timeout=300_000)   # the output, not the cell's source
            t0 = time.time()
            canvas = page.locator(SELECTOR[backend]).first
            canvas.wait_for(state='attached', timeout=300_000)
            if backend == 'itk':   # its label colours cannot be told from the UI's: wait for the widget's own 'ready'
                page.locator('[data-itk-state="ready"]').first.wait_for(state='attached', timeout=300_000)
            png, stats, ok = wait_drawn(lambda: page.locator(SELECTOR[backend]).first.screenshot(timeout=180_000),
                                        colours, 2, 300, page.wait_for_timeout)
            if not ok: raise RuntimeError(f'{backend} on {case_key}: never drawn: {stats}')
            took = time.time() - t0
            page.wait_for_function("() => document.body.innerText.includes('next cell ran 42')", timeout=120_000)
            note = page.locator('.jp-OutputArea-output').all_inner_texts()
            down = any('Downsampled for display' in n for n in note)
            (ROOT / 'tests' / '_out').mkdir(parents=True, exist_ok=True)
            (ROOT / 'tests' / '_out' / f'bench_view3d_{backend}_{case_key}.png').write_bytes(png)
            return {'s': took, 'downsampled': down, 'hits': stats['hits']}
        finally: ctx.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--cases', nargs='+', default=['mini', 'full'], choices=list(LOAD))
    ap.add_argument('--backends', nargs='+', default=['niivue', 'itk'], choices=list(SELECTOR))
    ap.add_argument('--dir', default=str(Path(tempfile.gettempdir()) / 'bench_atlas3'))
    a = ap.parse_args(argv)
    from conftest import find_chromium
    from abdomen_nb.viz import itk_assets_installed
    chromium = find_chromium()
    if chromium is None: sys.exit('no Chromium: run `make browser`')
    if 'itk' in a.backends and not itk_assets_installed(): sys.exit('the itk viewer is not installed: run `abdomen-nb viewer install-itk`')
    folder = None
    if 'full' in a.cases:
        from bench_report import build
        folder, _ = build(Path(a.dir))
    rows = []
    for case_key in a.cases:
        for backend in a.backends:
            runs = []
            for i in range(a.runs):
                with tempfile.TemporaryDirectory() as d:
                    runs.append(one(case_key, backend, folder, chromium, Path(d)))
            ts = [r['s'] for r in runs]
            rows.append((case_key, backend, statistics.median(ts), min(ts), max(ts), runs[-1]['downsampled']))
            print(f"{case_key:5s} {backend:7s} first render: median {statistics.median(ts):5.1f} s "
                  f"(min {min(ts):.1f}, max {max(ts):.1f}, {len(ts)} runs){'; downsampled for display' if runs[-1]['downsampled'] else ''}",
                  flush=True)
    return rows


if __name__ == '__main__':
    main()
