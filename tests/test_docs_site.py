"""The offline docs site: build it from nbs/ with tools/offline_docs.py, then load every page in headless
Chromium and check that it renders, that its figures load, that nothing is fetched from the network and
that no link between pages is broken. Screenshots go to tests/_out/docs_<page>.png."""
from __future__ import annotations

import json, os, re, subprocess, sys, time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import offline_docs  # noqa: E402


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site, built once per test session (shared by pytest-xdist workers through a lock)."
    import fcntl
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): base = base.parent        # the session's folder, shared by workers
    out = base / 'docs_site' / '_site'
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(base / 'docs_site.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (out / 'pages.json').exists(): _build(out)
        finally: fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def _build(out: Path):
    nbs = Path(offline_docs.nbdev_config().nbs_path)
    raw = {nb.relative_to(nbs).as_posix(): _shown_images(nb) for nb in offline_docs.list_notebooks(nbs)}   # read before the build
    (out.parent / 'raw_images.json').write_text(json.dumps(raw))
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'offline_docs.py'), '--out', str(out), '--quiet'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"offline_docs.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    print(f"site built in {time.time() - t0:.1f} s")


def _shown_images(nb_path: Path) -> int:
    "Image outputs of a notebook that the docs should show (not in hidden / output-less cells)."
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    n = 0
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        if re.search(r'^\s*#\|\s*(hide|include:\s*false|output:\s*false)\s*$', src, re.M): continue
        n += sum(any(k.startswith('image/') for k in o.get('data', {})) for o in c.get('outputs', []))
    return n


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob('*.html'))


def test_site_has_a_page_per_notebook(site):
    cfg = offline_docs.nbdev_config()
    nbs = Path(cfg.nbs_path)
    pages = {p.relative_to(site).as_posix() for p in _pages(site)}
    assert 'index.html' in pages and (site / 'site.css').exists()
    built_from = json.loads((site.parent / 'raw_images.json').read_text())   # the notebooks there at build time
    for name in built_from:
        nb = nbs / name
        want = offline_docs.page_name(nb, nbs, {}) if nb.stem != 'index' else 'index.html'
        assert want in pages, f"{name} has no page {want}; pages: {sorted(pages)}"
    for p in _pages(site):
        text = p.read_text(encoding='utf-8')
        # offline: no stylesheet, script or image may come from the network
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', text), f"{p.name} loads a remote resource"


def test_pages_render_in_chromium(site, browser, out_dir):
    # figures each page must show: the image outputs of its processed notebook (the build's manifest), and
    # at least one wherever the notebook itself holds figures (notebooks may be re-run while the site builds)
    manifest = json.loads((site / 'pages.json').read_text())
    raw_images = json.loads((site.parent / 'raw_images.json').read_text())
    expected_imgs = {m['page']: (m['figures'], m['notebook']) for m in manifest}
    for m in manifest:
        if m['notebook'] and raw_images.get(m['notebook'], 0) > 0:
            assert m['figures'] > 0, f"{m['notebook']} holds figures but its processed page has none"
    page = browser.new_page()
    remote, errors = [], []
    page.on('request', lambda r: remote.append(r.url) if not r.url.startswith(('file:', 'data:', 'about:')) else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    ids, links = {}, []
    t0 = time.time()
    for p in _pages(site):
        rel = p.relative_to(site).as_posix()
        page.goto(p.as_uri(), wait_until='load')
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=20_000)
        title = page.locator('main h1.title').inner_text().strip()
        assert title, f"{rel}: no title"
        assert page.locator('nav.sidebar a.active').count() == 1, f"{rel}: the sidebar does not mark the page"
        imgs = page.evaluate("() => [...document.querySelectorAll('main img')].map(i => [i.naturalWidth, i.naturalHeight, (i.src || '').slice(0, 40)])")
        broken = [s for w, h, s in imgs if w == 0 or h == 0]
        assert not broken, f"{rel}: {len(broken)} images did not load: {broken[:3]}"
        want, nb_name = expected_imgs.get(rel, (0, None))
        assert len(imgs) >= want, f"{rel}: shows {len(imgs)} figures but processed {nb_name} holds {want} image outputs"
        # the raw notebook directives and Quarto attribute syntax must not leak into the page
        body_text = page.locator('main').inner_text()
        assert '{target="_blank"' not in body_text, f"{rel}: Quarto link attributes shown verbatim"
        assert not re.search(r'^#\|\s*(export|hide)\b', body_text, re.M), f"{rel}: nbdev directives shown"
        ids[p.resolve()] = set(page.evaluate("() => [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.name)"))
        links += [(rel, h) for h in page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")]
        page.screenshot(path=str(out_dir / f"docs_{rel.replace('/', '_')[:-5]}.png"))
    assert not remote, f"pages tried to fetch from the network: {sorted(set(remote))[:5]}"
    assert not errors, f"JavaScript errors: {errors[:3]}"
    # every link to a local file points at an existing page, and at an existing anchor on it
    bad = []
    for src, href in links:
        u = urlparse(href)
        if u.scheme != 'file': continue
        target = Path(unquote(u.path)).resolve()
        if not target.exists(): bad.append((src, href)); continue
        if u.fragment and target in ids and unquote(u.fragment) not in ids[target]: bad.append((src, href))
    assert not bad, f"{len(bad)} broken links, e.g. {bad[:5]}"
    print(f"{len(ids)} pages, {len(links)} links checked in {time.time() - t0:.1f} s")


def test_sidebar_navigation_clicks_through(site, browser):
    page = browser.new_page()
    page.goto((site / 'index.html').as_uri())
    entries = page.locator('nav.sidebar li > a')
    n = entries.count()
    assert n >= 2
    last = entries.nth(n - 1)
    href = last.get_attribute('href')
    last.click()
    page.wait_for_load_state('load')
    assert page.url.endswith(href.split('/')[-1])
    assert page.locator('nav.sidebar a.active').get_attribute('href').endswith(href.split('/')[-1])
    page.locator('nav.pager a.prev').click()             # back one chapter with the pager
    page.wait_for_load_state('load')
    assert page.locator('main h1.title').inner_text().strip()


def test_readme_from_index_notebook(tmp_path):
    "README.md without Quarto: the nbdev-processed index notebook through nbconvert's MarkdownExporter."
    import nbformat
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('# abdomen_nb\n\n> Abdominal CT, one notebook at a time.'),
        nbformat.v4.new_code_cell('#| hide\nSECRET = 1'),
        nbformat.v4.new_markdown_cell('## Set-up\n\nSee the [viz chapter](02_viz.ipynb).'),
        nbformat.v4.new_code_cell('1 + 1', outputs=[nbformat.v4.new_output('execute_result', {'text/plain': '2'}, execution_count=1)]),
    ])
    nbformat.write(nb, nbs / 'index.ipynb')
    dest = offline_docs.build_readme(nbs, tmp_path / 'README.md')
    text = dest.read_text()
    assert text.splitlines()[2] == '# abdomen_nb', text[:300]
    assert '> Abdominal CT, one notebook at a time.' in text
    assert 'SECRET' not in text and '#|' not in text
    assert '## Set-up' in text and '1 + 1' in text and '2' in text


def test_quarto_config():
    "The Quarto configuration for machines that have Quarto (`make docs-quarto`)."
    q = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    assert q['project']['type'] == 'website'
    assert q['project']['output-dir'] == '_docs'
    assert 'html' in q['format']
    assert q['website']['title']


def test_sidebar_order_from_sidebar_yml(tmp_path):
    "nbs/sidebar.yml (nbdev / Quarto format) sets the order and sections; unlisted notebooks follow, by number."
    import nbformat
    for name in ('index.ipynb', '00_core.ipynb', '02_viz.ipynb', '10_seg.ipynb', '_draft.ipynb'):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / name)
    (tmp_path / 'sidebar.yml').write_text(yaml.safe_dump({'website': {'sidebar': {'contents': [
        'index.ipynb', {'section': 'Basics', 'contents': ['02_viz.ipynb', '00_core.ipynb', 'gone.ipynb']}]}}}))
    settings = offline_docs.site_settings(offline_docs.nbdev_config(), tmp_path)
    nav = [(sec, p.name) for sec, p in offline_docs.navigation(tmp_path, settings)]
    assert nav == [(None, 'index.ipynb'), ('Basics', '02_viz.ipynb'), ('Basics', '00_core.ipynb'),
                   ('Segmentation and benchmarking', '10_seg.ipynb')]
    (tmp_path / 'sidebar.yml').unlink()
    nav = [(sec, p.name) for sec, p in offline_docs.navigation(tmp_path, offline_docs.site_settings(offline_docs.nbdev_config(), tmp_path))]
    assert [n for _, n in nav] == ['index.ipynb', '00_core.ipynb', '02_viz.ipynb', '10_seg.ipynb']
