"""The offline docs site: build it from nbs/ with tools/offline_docs.py (the build itself fails on any cell
error, broken internal link or missing figure), then load every page in headless Chromium, served from
127.0.0.1, and check what a reader needs: each chapter's opening paragraph and full description, maths
rendered (no raw `$`), at least one API block per exported module, figures that load, backticked package
names that link to their blocks, no request leaving localhost, and a search that finds each chapter from a
word of its opening. Screenshots go to tests/_out/docs_<page>.png."""
from __future__ import annotations

import functools, http.server, json, os, re, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import offline_docs  # noqa: E402

NBS = ROOT / 'nbs'


# ----------------------------------------------------------------------------- building and serving the site
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
            if not (out / 'pages.json').exists() and not (out.parent / 'failed.txt').exists(): _build(out)
        finally: fcntl.flock(lock, fcntl.LOCK_UN)
    if (out.parent / 'failed.txt').exists(): pytest.fail((out.parent / 'failed.txt').read_text(), pytrace=False)
    return out


def _build(out: Path):
    nbs = Path(offline_docs.nbdev_config().nbs_path)
    raw = {nb.relative_to(nbs).as_posix(): _shown_images(nb) for nb in offline_docs.list_notebooks(nbs)}   # read before the build
    (out.parent / 'raw_images.json').write_text(json.dumps(raw))
    openings = {nb.relative_to(nbs).as_posix(): opening(nb) for nb in offline_docs.list_notebooks(nbs)}
    (out.parent / 'openings.json').write_text(json.dumps(openings))   # the notebooks as the build read them
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'offline_docs.py'), '--out', str(out), '--quiet'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        (out.parent / 'failed.txt').write_text(f"the docs build failed (offline_docs.py, exit {r.returncode}):\n"
                                               f"{r.stdout[-2000:]}\n{r.stderr[-6000:]}")
        shutil_rm(out / 'pages.json')
    print(f"site built in {time.time() - t0:.1f} s")


def shutil_rm(p: Path):
    try: p.unlink()
    except FileNotFoundError: pass


@pytest.fixture(scope='module')
def served(site):
    "The site over HTTP on 127.0.0.1 (Pagefind reads its index with fetch, which file:// does not allow)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/'
    finally: srv.shutdown(); srv.server_close()


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
    return sorted(p for p in site.rglob('*.html') if 'pagefind' not in p.relative_to(site).parts)


def _manifest(site: Path) -> list[dict]:
    return json.loads((site / 'pages.json').read_text())


# ----------------------------------------------------------------------------- what each page must carry
def _norm(s: str) -> str: return ' '.join(s.split())

def opening(nb_path: Path) -> tuple[str, str, list[str]]:
    """(title, description, text pieces of the opening paragraph) read from the notebook itself: the first
    paragraph after the title cell's header (or of the next prose cell), as plain-text runs between maths."""
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    md = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
    k = next((i for i, s in enumerate(md) if any(offline_docs._re_h1.match(l) for l in s.split('\n'))), None)
    if k is None: return '', '', []
    fm, body = offline_docs.split_header(md[k])
    paras = [p for s in [body] + md[k + 1:] for p in re.split(r'\n\s*\n', s)]
    para = next((p for p in paras if p.strip() and not re.match(r'^\s*(#|```|~~~|\||<|!\[|>|[-*] |\d+\. |\$\$)', p)), '')
    return fm.get('title', ''), fm.get('description', ''), plain_runs(para)

def plain_runs(md: str) -> list[str]:
    "Markdown prose as the text a browser shows, split where maths is (MathML reads differently)."
    runs, code = [], []
    for is_code, text in offline_docs._segments(md):
        if is_code:
            code.append(text.strip('`')); runs.append(f'\x00{len(code) - 1}\x00'); continue
        text = offline_docs._re_display_math.sub('\x01', text)
        text = offline_docs._re_inline_math.sub('\x01', text)
        text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)          # links and images -> their text
        text = re.sub(r'<[^>]+>', '', text)
        text = re.sub(r'(?<!\w)[*_]+|[*_]+(?!\w)', '', text)             # emphasis markers
        text = text.replace('\\$', '$')
        runs.append(text)
    joined = re.sub(r'\x00(\d+)\x00', lambda m: code[int(m.group(1))], ''.join(runs))
    return [_norm(r) for r in joined.split('\x01') if len(_norm(r)) >= 20]


def test_site_has_a_page_per_notebook(site):
    cfg = offline_docs.nbdev_config()
    nbs = Path(cfg.nbs_path)
    pages = {p.relative_to(site).as_posix() for p in _pages(site)}
    assert 'index.html' in pages and (site / 'site.css').exists()
    assert (site / 'pagefind' / 'pagefind-ui.js').exists(), "no search index"
    built_from = json.loads((site.parent / 'raw_images.json').read_text())   # the notebooks there at build time
    for name in built_from:
        nb = nbs / name
        want = offline_docs.page_name(nb, nbs, {}) if nb.stem != 'index' else 'index.html'
        assert want in pages, f"{name} has no page {want}; pages: {sorted(pages)}"
    for p in _pages(site):
        text = p.read_text(encoding='utf-8')
        # offline: no stylesheet, script or image may come from the network
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', text), f"{p.name} loads a remote resource"


def test_every_public_function_and_class_has_an_api_block(site):
    "Each page documents every public function and class its module defines (signature + docstring)."
    import importlib, inspect
    from bs4 import BeautifulSoup
    missing = []
    for m in _manifest(site):
        for modname in m['modules']:
            mod = importlib.import_module(modname)
            soup = BeautifulSoup((site / m['page']).read_text(encoding='utf-8'), 'html.parser')
            shown = {b['data-symbol'] for b in soup.select('.api-block[data-symbol]')}
            for name in getattr(mod, '__all__', []):
                obj = getattr(mod, name, None)
                if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, '__module__', None) != modname: continue
                if f'{modname}.{name}' not in shown: missing.append(f"{m['page']}: {modname}.{name}")
                else:
                    block = soup.select_one(f'.api-block[data-symbol="{modname}.{name}"]')
                    assert block.find('pre'), f"{m['page']}: the block of {name} has no signature"
                    sig = block.find('pre').get_text()
                    assert '](' not in sig and '[`' not in sig, f"{m['page']}: markdown link leaked into the signature of {name}: {sig[:200]}"
                    assert ':NoneType' not in sig, f"{m['page']}: `x=None` shown as `x:NoneType=None` in the signature of {name}: {sig[:200]}"
    assert not missing, f"{len(missing)} public functions/classes without an API block: {missing[:10]}"


def test_backticked_package_names_link_to_their_blocks(site):
    "A backticked name that is a documented package symbol is a link, and the link lands on its block."
    from bs4 import BeautifulSoup
    soups = {p.relative_to(site).as_posix(): BeautifulSoup(p.read_text(encoding='utf-8'), 'html.parser') for p in _pages(site)}
    documented = {}
    for page, soup in soups.items():
        for b in soup.select('.api-block[data-symbol]'):
            documented.setdefault(b['data-symbol'].split('.')[-1], page)
    unlinked, linked = [], 0
    for page, soup in soups.items():
        for code in soup.select('main code'):
            if code.find_parent(['pre', 'h1', 'h2', 'h3', 'h4']): continue
            name = code.get_text().strip().removesuffix('()')
            if name not in documented: continue
            a = code.find_parent('a')
            if a is None: unlinked.append(f'{page}: `{name}`'); continue
            linked += 1
            target, _, frag = a['href'].partition('#')
            tsoup = soups[target or page]
            el = tsoup.find(id=frag)
            assert el is not None and el.find_parent(class_=['api-block', 'api-anchors']), f"{page}: `{name}` links to {a['href']}, not to a block"
    assert not unlinked, f"{len(unlinked)} backticked package names link nowhere: {unlinked[:10]}"
    assert linked > 50
    print(f"{linked} backticked package names link to their blocks")


def test_pages_in_chromium(site, served, browser, out_dir):
    """Every page, as a reader sees it: title and full description, the chapter's opening paragraph, maths
    as MathML (no raw `$`), at least one API block per exported module, every image loaded, no widget
    placeholders for progress bars, no request leaving 127.0.0.1, no JavaScript error, no broken link."""
    manifest = {m['page']: m for m in _manifest(site)}
    openings = json.loads((site.parent / 'openings.json').read_text())
    for m in manifest.values():     # the figures of the notebook as the build read it (others may re-run it meanwhile)
        if m['notebook']:
            assert m['figures'] >= m['notebook_figures'], \
                f"{m['notebook']} holds {m['notebook_figures']} figures but its processed page {m['figures']}"
    page = browser.new_page()
    remote, errors = [], []
    page.on('request', lambda r: remote.append(r.url) if not r.url.startswith((served, 'data:', 'about:', 'blob:')) else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    ids, links, raw_maths = {}, [], []
    t0 = time.time()
    for p in _pages(site):
        rel = p.relative_to(site).as_posix()
        m = manifest.get(rel, {})
        page.goto(served + rel, wait_until='load')
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=20_000)
        title = page.locator('main h1.title').inner_text().strip()
        assert title, f"{rel}: no title"
        assert page.locator('nav.sidebar a.active').count() == 1, f"{rel}: the sidebar does not mark the page"
        assert page.locator('#search input').count() == 1 or page.wait_for_selector('#search input', timeout=10_000), f"{rel}: no search box"
        imgs = page.evaluate("() => [...document.querySelectorAll('main img')].map(i => [i.naturalWidth, i.naturalHeight, (i.src || '').slice(0, 40)])")
        broken = [s for w, h, s in imgs if w == 0 or h == 0]
        assert not broken, f"{rel}: {len(broken)} images did not load: {broken[:3]}"
        assert len(imgs) >= m.get('figures', 0), f"{rel}: shows {len(imgs)} figures but its notebook holds {m.get('figures')}"
        text = _norm(page.locator('main').inner_text())
        prose = page.evaluate("""() => { const c = document.querySelector('main').cloneNode(true);
            c.querySelectorAll('pre, code, math, .highlight, .output_area, script').forEach(e => e.remove()); return c.innerText; }""")
        raw_maths += [f"{rel}: {x[:60]}" for x in offline_docs._re_inline_math.findall(prose)
                      + offline_docs._re_display_math.findall(prose)]
        assert page.locator('main math').count() >= m.get('maths', 0), f"{rel}: fewer MathML elements than formulas"
        assert '{target="_blank"' not in text, f"{rel}: Quarto link attributes shown verbatim"
        assert not re.search(r'(^|\s)#\|\s*(export|hide)\b', text), f"{rel}: nbdev directives shown"
        assert not re.search(r'\d+%\|[^|]*\|\s*\d+/\d+', text) and 'Interactive widget' not in text or 'NiiVue' in text or 'view3d' in text, \
            f"{rel}: a progress bar shows as a widget placeholder"
        if m.get('notebook'):
            nb_title, desc, runs = openings[m['notebook']]
            if desc:
                shown = _norm(page.locator('main p.description').inner_text())
                assert shown == _norm(re.sub(r'`([^`]*)`', r'\1', desc)), f"{rel}: the description is cut: {shown!r}"
            for run in runs:
                assert run in text, f"{rel}: the opening paragraph of {m['notebook']} is not on the page: {run[:120]!r}"
            for mod in m['modules']:
                n = page.locator(f'.api-block[data-module="{mod}"]').count()
                assert n >= 1, f"{rel}: no API block for {mod}"
        ids[rel] = set(page.evaluate("() => [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.name)"))
        links += [(rel, h) for h in page.evaluate("() => [...document.querySelectorAll('main a[href], nav a[href]')].map(a => a.href)")]
        page.screenshot(path=str(out_dir / f"docs_{rel.replace('/', '_')[:-5]}.png"))
    assert not raw_maths, f"raw $ maths on the pages: {raw_maths[:5]}"
    assert not remote, f"pages tried to fetch from outside 127.0.0.1: {sorted(set(remote))[:5]}"
    assert not errors, f"JavaScript errors: {errors[:3]}"
    bad = []
    for src, href in links:
        if not href.startswith(served): continue
        u = urlparse(href)
        target = unquote(u.path).lstrip('/') or 'index.html'
        if not (site / target).exists(): bad.append((src, href)); continue
        if u.fragment and target in ids and unquote(u.fragment) not in ids[target]: bad.append((src, href))
    assert not bad, f"{len(bad)} broken links, e.g. {bad[:5]}"
    print(f"{len(ids)} pages, {len(links)} links checked in {time.time() - t0:.1f} s")


def _search_terms(site: Path) -> dict:
    "page -> the two words of the chapter's opening paragraph that the fewest other pages hold."
    from bs4 import BeautifulSoup
    texts = {}
    for p in _pages(site):
        main = BeautifulSoup(p.read_text(encoding='utf-8'), 'html.parser').find('main')
        words = set(re.findall(r'[a-z]+', main.get_text(' ').lower())) if main else set()
        texts[p.relative_to(site).as_posix()] = words | {w[:6] for w in words}     # ~ the stems Pagefind matches
    openings = json.loads((site.parent / 'openings.json').read_text())
    out = {}
    for m in _manifest(site):
        if not m['notebook'] or m['page'] == 'index.html': continue
        words = {w.lower() for r in openings[m['notebook']][2] for w in re.findall(r'[A-Za-z]{5,}', r)}
        words = sorted(w for w in words if w in texts[m['page']])
        if words:
            rare = sorted(words, key=lambda w: (sum(w[:6] in t for t in texts.values()), -len(w)))[:2]
            out[m['page']] = ' '.join(rare)
    return out


def test_search_finds_each_chapter_from_its_opening(site, served, browser):
    "Pagefind's box on the index page: two words from a chapter's opening list that chapter among the first results."
    terms = _search_terms(site)
    assert len(terms) >= 3
    page = browser.new_page()
    remote = []
    page.on('request', lambda r: remote.append(r.url) if not r.url.startswith((served, 'data:', 'about:', 'blob:')) else None)
    page.goto(served + 'index.html', wait_until='load')
    box = page.wait_for_selector('#search input', timeout=15_000)
    missed = []
    for target, term in terms.items():
        box.fill('')
        box.fill(term)
        try:
            page.wait_for_function("""(t) => [...document.querySelectorAll('.pagefind-ui__result-link')]
                .some(a => a.getAttribute('href').split('#')[0].endsWith('/' + t))""", arg=target, timeout=10_000)
        except Exception:
            got = page.evaluate("() => [...document.querySelectorAll('.pagefind-ui__result-link')].map(a => a.getAttribute('href'))")
            missed.append(f"{term!r} -> {got[:5]} (wanted {target})")
    assert not missed, f"search did not find the chapter: {missed}"
    assert not remote, f"search fetched from outside 127.0.0.1: {remote[:3]}"


def test_sidebar_navigation_clicks_through(site, browser):
    page = browser.new_page()
    page.goto((site / 'index.html').as_uri())
    assert 'make docs-serve' in page.locator('#search').inner_text()      # file://: how to get search
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


# ----------------------------------------------------------------------------- the build fails on bad notebooks
def _nb(cells, path: Path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, path)


def test_build_fails_on_cell_error_broken_link_and_missing_figure(tmp_path):
    "A tiny notebook set with one of each fault: the build exits non-zero and names notebook, cell and fault."
    import nbformat
    v4 = nbformat.v4
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    _nb([v4.new_markdown_cell('# Home\n\n> The index.\n\nSee [a chapter](01_good.ipynb).')], nbs / 'index.ipynb')
    _nb([v4.new_markdown_cell('# Good\n\n> Fine.\n\nThe opening: $a^2 + b^2 = c^2$, costs $5 and $10.'),
         v4.new_code_cell('1 + 1', outputs=[v4.new_output('execute_result', {'text/plain': '2'}, execution_count=1)])],
        nbs / '01_good.ipynb')
    err = v4.new_output('error', ename='ZeroDivisionError', evalue='division by zero', traceback=[])
    _nb([v4.new_markdown_cell('# Bad\n\n> Three faults.'),
         v4.new_code_cell('1 / 0', outputs=[err]),
         v4.new_markdown_cell('A [link](03_not_written.ipynb) and a figure: ![a plot](figures/gone.png)'),
         v4.new_code_cell('show_doc(no_such_function)')],
        nbs / '02_bad.ipynb')
    out = tmp_path / '_site'
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'offline_docs.py'), '--out', str(out), '--nbs', str(nbs),
                        '--no-cache', '--quiet', '--no-search'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    err_text = r.stderr
    assert re.search(r"02_bad\.ipynb: cell 1 \('1 / 0'\): the stored output is an error \(ZeroDivisionError", err_text), err_text
    assert re.search(r"02_bad\.ipynb: cell 2 .*missing figure 'figures/gone\.png'", err_text), err_text
    assert re.search(r"bad\.html: broken link '03_not_written\.ipynb'", err_text), err_text
    assert re.search(r"02_bad\.ipynb: cell 3 \('show_doc\(no_such_function\)'\): show_doc fails: NameError", err_text), err_text
    assert 'FAILED with 4 error(s)' in err_text, err_text
    assert '01_good' not in err_text                      # maths and currency in the good chapter are fine
    good = (out / 'good.html').read_text()
    assert good.count('<math') == 1 and '$5 and $10' in good
    # --allow-errors: the same site as a preview, exit 0
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'offline_docs.py'), '--out', str(out), '--nbs', str(nbs),
                        '--no-cache', '--quiet', '--no-search', '--allow-errors'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (out / 'build_errors.txt').exists(), r.stderr


# ----------------------------------------------------------------------------- the pieces
def test_title_cell_keeps_its_prose_and_whole_description():
    fm, body = offline_docs.split_header('# Phantom: truth\n\n> A generator of CT volumes\n> in which every organ is known.\n\n'
                                         'The paper\'s idea, and its headline number: 0.91 DSC.\n\nA second paragraph.')
    assert fm == {'title': 'Phantom: truth', 'description': 'A generator of CT volumes in which every organ is known.'}
    assert body == "The paper's idea, and its headline number: 0.91 DSC.\n\nA second paragraph."
    fm, body = offline_docs.split_header('# T\n\n> d\n\n- skip_showdoc: true\n\nBody')
    assert fm == {'title': 'T', 'description': 'd', 'skip_showdoc': True} and body == 'Body'
    fm, body = offline_docs.split_header('# T\n\n- **students**: read it\n- researchers: import it')
    assert fm == {'title': 'T'} and body.startswith('- **students**')


def test_maths_outside_code_becomes_mathml_and_currency_stays():
    errors = []
    t = offline_docs.MathTable('x')
    md = ("Dice is $2|A \\cap B| / (|A| + |B|)$; it costs \\$5, or $5 and $10.\n\n"
          "`$not maths$` and\n\n```python\nprice = '$1$'\n```\n\n$$\nR_i = \\sum_j z_{ij}\n$$\n")
    out = t.extract(md, 'here', errors)
    assert not errors and len(t.items) == 2
    assert '`$not maths$`' in out and "price = '$1$'" in out and '$5 and $10' in out and '\\$5' in out
    html_ = t.substitute(f"<p>{out.split(chr(10))[0]}</p><p>{[l for l in out.split(chr(10)) if 'zzmath' in l][-1]}</p>")
    assert html_.count('<math') == 2 and 'display="block"' in html_
    t.extract('bad $\\left( x$ and $\\foo y$ here', 'nb.ipynb: cell 3', errors)
    assert len(errors) == 2 and errors[0].startswith('nb.ipynb: cell 3: cannot render the maths') and 'foo' in errors[1]


def test_progress_bars_are_dropped_other_widgets_get_a_note():
    bar = {'output_type': 'display_data', 'metadata': {}, 'data': {
        offline_docs.WIDGET_MIME: {'model_id': 'x'}, 'text/plain': 'train unet:   0%|          | 0/300 [00:00<?, ?it/s]'}}
    viewer = {'output_type': 'display_data', 'metadata': {}, 'data': {
        offline_docs.WIDGET_MIME: {'model_id': 'y'}, 'text/plain': '<ipyniivue.widget.NiiVue object>'}}
    assert offline_docs._clean_output(bar) is None
    assert 'Interactive widget' in offline_docs._clean_output(viewer)['data']['text/html']


def test_every_notebook_has_a_kernelspec():
    "`make lab` opens each notebook without asking for a kernel: nbs/*.ipynb name the python3 kernel."
    missing = []
    for p in sorted(NBS.glob('*.ipynb')):
        ks = json.loads(p.read_text(encoding='utf-8')).get('metadata', {}).get('kernelspec') or {}
        if ks.get('name') != 'python3' or ks.get('language') != 'python': missing.append(p.name)
    assert not missing, (f"{len(missing)} notebooks without the python3 kernelspec: {missing}; run "
                         "`python tools/strip_widget_state.py nbs/*.ipynb` (it sets it) before committing")


def test_strip_widget_state_sets_the_kernelspec(tmp_path):
    import nbformat
    p = tmp_path / 'a.ipynb'
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])
    nb.metadata['widgets'] = {'application/vnd.jupyter.widget-state+json': {'state': {}}}
    nbformat.write(nb, p)
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'strip_widget_state.py'), str(p)], check=True, capture_output=True)
    md = json.loads(p.read_text())['metadata']
    assert 'widgets' not in md
    assert md['kernelspec'] == {'name': 'python3', 'display_name': 'Python 3 (abdomen_nb)', 'language': 'python'}
    before = p.read_text()
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'strip_widget_state.py'), str(p)], check=True, capture_output=True)
    assert p.read_text() == before                        # idempotent


def test_readme_from_index_notebook(tmp_path):
    "README.md without Quarto: the nbdev-processed index notebook through nbconvert's MarkdownExporter."
    import nbformat
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('# abdomen_nb\n\n> Abdominal CT, one notebook at a time.\n\nThe first paragraph.'),
        nbformat.v4.new_code_cell('#| hide\nSECRET = 1'),
        nbformat.v4.new_markdown_cell('## Set-up\n\nSee the [viz chapter](02_viz.ipynb).'),
        nbformat.v4.new_code_cell('1 + 1', outputs=[nbformat.v4.new_output('execute_result', {'text/plain': '2'}, execution_count=1)]),
    ])
    nbformat.write(nb, nbs / 'index.ipynb')
    dest = offline_docs.build_readme(nbs, tmp_path / 'README.md')
    text = dest.read_text()
    assert text.splitlines()[2] == '# abdomen_nb', text[:300]
    assert '> Abdominal CT, one notebook at a time.' in text and 'The first paragraph.' in text
    assert 'SECRET' not in text and '#|' not in text
    assert '## Set-up' in text and '1 + 1' in text and '2' in text


def test_readme_lists_only_working_extras():
    "The README names only the extras settings.ini declares, and says `make test` installs Chromium."
    import configparser
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    extras = {k[len('extras_'):] for k in cfg['DEFAULT'] if k.startswith('extras_')}
    readme = (ROOT / 'README.md').read_text()
    named = set(re.findall(r'\.\[(\w+)\]', readme))
    assert named <= extras, f"README names extras settings.ini does not have: {named - extras}"
    # the itk extra is installable (anywidget, no itkwidgets pins) and the README says how its viewer assets arrive
    if 'itk' in extras:
        assert 'itkwidgets' not in cfg['DEFAULT']['extras_itk'], cfg['DEFAULT']['extras_itk']
        assert 'make itk' in readme or 'install-itk' in readme
    assert re.search(r'make test.*Chromium', readme, re.S | re.I)


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


def test_missing_browser_skips_unless_required(monkeypatch):
    "Without Chromium the browser checks skip and say how to get it; ABDOMEN_NB_REQUIRE_BROWSER=1 (CI) fails them."
    import conftest
    msg = conftest.NO_CHROMIUM.format(where='/usr/bin/chromium')
    assert 'make browser' in msg and 'apt-get install' in msg and 'ABDOMEN_NB_CHROMIUM' in msg
    monkeypatch.delenv(conftest.REQUIRE_BROWSER, raising=False)
    with pytest.raises(pytest.skip.Exception, match='make browser'): conftest.browser_missing(msg)
    monkeypatch.setenv(conftest.REQUIRE_BROWSER, '1')
    with pytest.raises(pytest.fail.Exception, match='ABDOMEN_NB_REQUIRE_BROWSER=1'): conftest.browser_missing(msg)
    assert 'ABDOMEN_NB_REQUIRE_BROWSER=1' in (ROOT / '.ci' / 'run').read_text()
