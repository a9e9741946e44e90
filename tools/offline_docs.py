#!/usr/bin/env python
"""Build the documentation site without Quarto: nbdev-processed notebooks -> static HTML.

    python tools/offline_docs.py --out _site      # the whole site (what `make docs` runs)
    python tools/offline_docs.py --readme-only    # README.md from nbs/index.ipynb

Every notebook in `nbs/` goes through nbdev's own notebook processors (`nbdev.processors.FilterDefaults`,
the same ones `nbdev_docs` runs before Quarto): `#| hide` / `#| export` directives are applied, `show_doc`
cells are added after exported definitions and executed, backticked names become links. The processed
notebook is then rendered with nbconvert's `HTMLExporter` (outputs and figures embedded as data URIs) and
wrapped in a page with a sidebar of chapters (order and titles from `nbs/sidebar.yml` or `_quarto.yml`
when they list pages, else the notebook numbers), previous/next links and one local stylesheet. Links to
the published site (`doc_host` + `doc_baseurl` in settings.ini) and to `*.ipynb` files become relative
links between the generated pages, so the site works from `file://` with no network.
"""
from __future__ import annotations

import argparse, base64, copy, html, json, os, re, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# chapter-number ranges -> sidebar section (used when no sidebar.yml / _quarto.yml lists the pages)
SECTIONS = [(0, 'Foundations'), (10, 'Segmentation and benchmarking'), (20, 'Measurements and reports'),
            (30, 'Visual question answering'), (40, 'Tumor and CT synthesis'), (50, 'Label quality and curation'),
            (60, 'Explainability'), (90, 'Pipeline')]
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
WIDGET_NOTE = ('<div class="widget-note">Interactive widget: it needs a running kernel, so it does not show on '
               'this static page. Run the notebook in JupyterLab to use it (the static figure next to it shows '
               'the same data).</div>')
_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_re_num = re.compile(r'^(\d+)_')
_re_quarto_attrs = re.compile(r'(\]\([^)]*\)|`)\{[^{}\n]*\}')   # [text](url){target=...} -> [text](url)
_re_fence_div = re.compile(r'^\s*:::.*$', re.MULTILINE)


# ---------------------------------------------------------------- configuration
def _yaml(path: Path) -> dict:
    if not path.exists(): return {}
    import yaml
    return yaml.safe_load(path.read_text(encoding='utf-8')) or {}

def nbdev_config():
    "nbdev's settings.ini config, read from the repository root."
    from nbdev.config import get_config
    return get_config(path=ROOT)

def doc_url(cfg) -> str:
    "The published docs URL (links to it are rewritten to relative links)."
    return (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/'

def site_settings(cfg, nbs: Path) -> dict:
    "Title, description, extra css and sidebar entries from _quarto.yml / nbs/sidebar.yml / settings.ini."
    q = _yaml(ROOT / '_quarto.yml')
    web = q.get('website', {}) or {}
    side = (_yaml(nbs / 'sidebar.yml').get('website', {}) or {}).get('sidebar', {}) or web.get('sidebar', {}) or {}
    if isinstance(side, list): side = side[0] if side else {}
    return {'title': web.get('title') or cfg.get('title') or cfg.get('lib_name'),
            'description': web.get('description') or cfg.get('description', ''),
            'contents': side.get('contents') if isinstance(side, dict) else None,
            'repo': cfg.get('git_url', '')}


# ---------------------------------------------------------------- which notebooks, in which order
def list_notebooks(nbs: Path) -> list[Path]:
    "Every notebook under `nbs`, skipping hidden and `_`-prefixed files and folders (like nbdev)."
    out = []
    for p in sorted(nbs.rglob('*.ipynb')):
        rel = p.relative_to(nbs)
        if any(part.startswith(('.', '_')) for part in rel.parts): continue
        out.append(p)
    return out

def _chapter_key(p: Path):
    m = _re_num.match(p.name)
    return (0 if p.stem == 'index' else 1, int(m.group(1)) if m else 10**6, str(p))

def _section_of(p: Path) -> str | None:
    m = _re_num.match(p.name)
    if not m: return None
    n = int(m.group(1))
    return [name for start, name in SECTIONS if n >= start][-1]

def _flatten_contents(contents, nbs: Path, section=None):
    "Yield (section, path) for the notebooks a Quarto sidebar `contents` list names, in order."
    for item in contents or []:
        if isinstance(item, str): yield section, nbs / item
        elif isinstance(item, dict):
            if 'contents' in item:
                yield from _flatten_contents(item['contents'], nbs, item.get('section') or item.get('text') or section)
            elif 'href' in item or 'file' in item: yield section, nbs / (item.get('href') or item.get('file'))

def navigation(nbs: Path, settings: dict) -> list[tuple[str | None, Path]]:
    "(section, notebook) pairs in sidebar order; notebooks a sidebar file does not list are appended."
    found = list_notebooks(nbs)
    order = []
    if settings.get('contents'):
        order = [(s, p) for s, p in _flatten_contents(settings['contents'], nbs) if p.suffix == '.ipynb' and p.exists()]
    listed = {p.resolve() for _, p in order}
    rest = sorted((p for p in found if p.resolve() not in listed), key=_chapter_key)
    return order + [(_section_of(p), p) for p in rest]


# ---------------------------------------------------------------- nbdev processing
def _run_procs(path: Path, with_show_doc: bool = True):
    from execnb.nbio import read_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults, exec_show_docs
    nb = read_nb(path)
    procs = FilterDefaults().procs()
    if not with_show_doc: procs = procs.filter(lambda p: p is not exec_show_docs)
    old, cwd = os.environ.get('IN_TEST'), os.getcwd()
    os.environ['IN_TEST'] = '1'          # as nbdev's serve_drv does: no slow work in show_doc
    try:
        os.chdir(path.parent)
        NBProcessor(nb=nb, procs=procs).process()
    finally:
        os.chdir(cwd)
        if old is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = old
    return nb

def process_notebook(path: Path, errors: list | None = None):
    """Run nbdev's docs processors on one notebook; return (processed nb, frontmatter dict).
    If executing the `show_doc` cells fails (e.g. an import the notebook needs is missing), the page is
    processed again without them and the error is appended to `errors`."""
    import warnings
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            nb = _run_procs(path)
        mixed = sum('imports and other code' in str(w.message) for w in caught)
        if mixed: print(f"offline_docs: note: {path.name} has {mixed} cell(s) mixing imports and other code "
                        "(nbdev runs them to build show_doc; see the nbdev FAQ)", file=sys.stderr)
    except Exception as e:
        cause = e.__cause__ or e
        msg = f"{path.name}: nbdev could not run its show_doc cells ({type(cause).__name__}: {cause}); page built without API docs"
        if errors is not None: errors.append(msg)
        else: print('offline_docs: WARNING ' + msg, file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            nb = _run_procs(path, with_show_doc=False)
    fm = {}
    if nb.cells and nb.cells[0].cell_type == 'raw' and nb.cells[0].source.lstrip().startswith('---'):
        import yaml
        text = nb.cells[0].source.strip().strip('-')
        fm = yaml.safe_load(text) or {}
        nb.cells.pop(0)
    return nb, fm

def page_name(path: Path, nbs: Path, fm: dict) -> str:
    "The HTML file of a notebook: nbdev's `output-file`, else the name without its number prefix."
    rel = path.relative_to(nbs)
    name = fm.get('output-file') or (_re_num.sub('', rel.stem) + '.html')
    return str(rel.parent / name) if str(rel.parent) != '.' else name

def _directives(src: str):
    "Split leading `#| key: value` lines from a code cell: (dict, remaining source)."
    lines, d = src.splitlines(), {}
    i = 0
    while i < len(lines):
        m = _re_directive.match(lines[i])
        if not m:
            if lines[i].strip() == '': i += 1; continue
            break
        d[m.group(1)] = m.group(2); i += 1
    return d, '\n'.join(lines[i:])

def _false(v) -> bool: return str(v).strip().lower() in ('false', 'no', '0')

def _fix_markdown(text: str) -> str:
    "Drop Quarto-only syntax nbconvert would print verbatim: link attributes and fenced-div markers."
    return _re_fence_div.sub('', _re_quarto_attrs.sub(r'\1', text))

def _clean_output(o: dict) -> dict | None:
    o = copy.deepcopy(dict(o))
    join = lambda v: ''.join(v) if isinstance(v, list) else v   # noqa: E731  (nbformat's split lines)
    if 'text' in o: o['text'] = join(o['text'])
    data = o.get('data')
    if data is not None:
        data = o['data'] = {k: (v if k.endswith('json') else join(v)) for k, v in data.items()}
        if WIDGET_MIME in data:
            return {'output_type': 'display_data', 'metadata': {}, 'data': {'text/html': WIDGET_NOTE}}
        if 'text/markdown' in data:
            md = data['text/markdown']
            data['text/markdown'] = _fix_markdown(''.join(md) if isinstance(md, list) else md)
    o.pop('transient', None)
    return o

def _reorder_show_docs(cells):
    "nbdev inserts the show_doc cells of one export cell in reverse order; put them back in source order."
    out, run = [], []
    for c in cells:
        if getattr(c, 'has_sd', False) or (isinstance(c, dict) and c.get('has_sd')): run.append(c); continue
        out.extend(reversed(run)); run = []
        out.append(c)
    out.extend(reversed(run))
    return out

def to_nbformat(nb, nbs_dir: Path):
    "A clean nbformat notebook for nbconvert: directives applied, widget and Quarto-only bits replaced."
    import nbformat
    cells = []
    for c in _reorder_show_docs(list(nb.cells)):
        src = c.source if isinstance(c.source, str) else ''.join(c.source)
        if c.cell_type == 'markdown':
            src = _fix_markdown(src)
            if not src.strip() or src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            cell = nbformat.v4.new_markdown_cell(src)
            if c.get('attachments'): cell['attachments'] = c['attachments']
        elif c.cell_type == 'code':
            d, body = _directives(src)
            if _false(d.get('include', 'true')): continue
            cell = nbformat.v4.new_code_cell(body)
            outs = [] if _false(d.get('output', 'true')) else [o for o in map(_clean_output, c.get('outputs', []) or []) if o]
            cell['outputs'] = [nbformat.from_dict(o) for o in outs]
            tags = []
            if _false(d.get('echo', 'true')) or not body.strip(): tags.append('remove_input')
            if not cell['outputs'] and 'remove_input' in tags: continue
            cell['metadata']['tags'] = tags
            if 'code-fold' in d and not _false(d['code-fold']): cell['metadata']['fold'] = True
        else:
            continue   # raw cells are Quarto/LaTeX material
        cells.append(cell)
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata['language_info'] = {'name': 'python'}
    return out


# ---------------------------------------------------------------- processing many notebooks, with a cache
CACHE_DIR = ROOT / '_proc' / 'offline_docs'   # ignored by git; `make clean` removes it
DEFAULT_WORKERS = 1   # more workers each import the package's heavy dependencies again: rarely faster on 2 cores

def _cache_key(path: Path, with_package: bool = False) -> str:
    """Changes when the notebook, settings.ini or this script change (and, for `with_package`, any module
    of the package: a page whose show_doc cells failed is retried once the code it imports changes)."""
    import hashlib
    h = hashlib.sha256()
    files = [path, ROOT / 'settings.ini', Path(__file__)]
    if with_package: files += sorted((ROOT / 'abdomen_nb').glob('*.py'))
    for f in files: h.update(f.read_bytes() if f.exists() else b'')
    h.update(str(path.resolve()).encode())
    return h.hexdigest()[:32] + ('p' if with_package else '')

def _process_for_site(path: str) -> dict:
    "Worker: nbdev processing + clean-up of one notebook, as JSON-friendly data."
    import nbformat
    p, errors = Path(path), []
    nb, fm = process_notebook(p, errors)
    clean = to_nbformat(nb, p.parent)
    return {'nb': nbformat.writes(clean), 'fm': json.loads(json.dumps(fm, default=str)), 'errors': errors}

def processed_notebooks(paths, cache: Path | None = CACHE_DIR, workers: int = DEFAULT_WORKERS, quiet=False) -> dict:
    """Process notebooks (in `workers` separate processes, so that one notebook's code cannot disturb the
    next), reusing cached results for unchanged notebooks. Pages with processing errors are not cached."""
    import nbformat
    out, todo = {}, []
    for p in paths:
        hit = None
        for f in ([cache / f'{_cache_key(p)}.json', cache / f'{_cache_key(p, True)}.json'] if cache else []):
            if f.exists():
                try: hit = json.loads(f.read_text(encoding='utf-8')); break
                except ValueError: pass
        if hit is not None: out[p] = hit
        else: todo.append(p)
    if todo and not quiet: print(f"offline_docs: processing {len(todo)} notebook(s) with nbdev ({len(paths) - len(todo)} cached)")
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        fn = _process_for_site
        if __name__ == '__main__':   # run as a script: workers must find the function under an importable name
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import offline_docs
            fn = offline_docs._process_for_site
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context('spawn')) as ex:
            results = dict(zip(todo, ex.map(fn, [str(p) for p in todo])))
    else:
        results = {p: _process_for_site(str(p)) for p in todo}
    for p, rec in results.items():
        for e in rec['errors']: print('offline_docs: WARNING ' + e, file=sys.stderr)
        out[p] = rec
        if cache:
            key = _cache_key(p, with_package=bool(rec['errors']))
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f'.{key}.{os.getpid()}.tmp'
            tmp.write_text(json.dumps(rec), encoding='utf-8'); os.replace(tmp, cache / f'{key}.json')
    return {p: {**rec, 'nb': nbformat.reads(rec['nb'], as_version=4)} for p, rec in out.items()}


# ---------------------------------------------------------------- HTML
def render_body(nb, nbs_dir: Path) -> str:
    "nbconvert's `basic` HTML (no page chrome), images embedded."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.HTMLExporter.embed_images = True
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    exp = HTMLExporter(config=c, template_name='basic')
    body, _ = exp.from_notebook_node(nb, resources={'metadata': {'path': str(nbs_dir)}})
    return body

def pandoc_id(text: str) -> str:
    "The identifier Pandoc/Quarto gives a heading (what nbdev's doc links point at)."
    t = re.sub(r'[^\w\s.-]', '', text.strip().lower())
    t = re.sub(r'\s+', '-', t)
    return re.sub(r'^[^a-z]+', '', t) or 'section'

def fix_html(body: str, page: str, pages: dict, doc_root: str) -> tuple[str, list]:
    """Give headings Quarto-style ids, make links to the published docs and to notebooks relative.
    Returns (html, [(level, id, text)] for the page's table of contents)."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(body, 'html.parser')
    toc, used = [], set()
    for h in soup.find_all(['h1', 'h2', 'h3', 'h4']):
        for a in h.find_all('a', class_='anchor-link'): a.decompose()
        text = h.get_text(' ', strip=True)
        old, new = h.get('id'), pandoc_id(text)
        base, k = new, 1
        while new in used: k += 1; new = f'{base}-{k}'
        used.add(new)
        h['id'] = new
        if old and old != new:
            h.insert(0, soup.new_tag('span', id=old))
        a = soup.new_tag('a', href=f'#{new}', attrs={'class': 'anchor-link'}); a.string = '#'
        h.append(a)
        if h.name in ('h2', 'h3') and not h.find_parent(class_='output_markdown'): toc.append((h.name, new, text))
    for p in soup.select('.output_markdown p'):     # show_doc's "[source](...)" line: float it right
        kids = [k for k in p.contents if str(k).strip()]
        if len(kids) == 1 and getattr(kids[0], 'name', None) == 'a' and kids[0].get_text(strip=True) == 'source':
            p['class'] = p.get('class', []) + ['source-link']
    depth = page.count('/')
    up = '../' * depth
    by_nb = {Path(nb).name: html_name for nb, html_name in pages.items()}
    for a in soup.find_all('a', href=True):
        href = a['href']
        if doc_root and href.startswith(doc_root):
            rest = href[len(doc_root):]
            a['href'] = up + (rest or 'index.html')
            href = a['href']
        path, _, frag = href.partition('#')
        if path.endswith('.ipynb') and not re.match(r'^[a-z]+://', path):
            target = by_nb.get(Path(path).name)
            if target: a['href'] = up + target + (f'#{frag}' if frag else '')
        if href.startswith(('http://', 'https://')): a['target'] = '_blank'; a['rel'] = 'noopener'
    for s in soup.find_all('script', src=True):   # no network: nothing may load from a CDN
        if re.match(r'^(https?:)?//', s['src']): s.decompose()
    return str(soup), toc

STYLE = """
:root { --fg:#1f2328; --muted:#59636e; --accent:#0b63c5; --bg-code:#f6f8fa; --border:#d1d9e0; --side:270px; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.site-header { position: sticky; top:0; z-index:10; background:#0b3d66; color:#fff; padding:.6rem 1.2rem; display:flex; gap:1rem; align-items:baseline; }
.site-header a { color:#fff; font-weight:600; font-size:1.1rem; } .site-header span { color:#cfe0f0; font-size:.85rem; }
.layout { display:flex; align-items:flex-start; }
nav.sidebar { position: sticky; top:2.8rem; width:var(--side); flex:0 0 var(--side); height:calc(100vh - 2.8rem); overflow-y:auto; padding:1rem .8rem 2rem 1.2rem; border-right:1px solid var(--border); font-size:.92rem; background:#fbfcfd; }
nav.sidebar .section { margin:.9rem 0 .2rem; font-weight:600; color:var(--muted); text-transform:uppercase; font-size:.75rem; letter-spacing:.04em; }
nav.sidebar ul { list-style:none; margin:0; padding:0; } nav.sidebar li a { display:block; padding:.22rem .5rem; border-radius:4px; color:var(--fg); }
nav.sidebar li a.active { background:#e3eefb; color:var(--accent); font-weight:600; }
nav.sidebar ul.toc { margin:.1rem 0 .4rem .8rem; border-left:2px solid #e3eefb; } nav.sidebar ul.toc a { font-size:.84rem; color:var(--muted); padding:.1rem .5rem; }
main { flex:1 1 auto; min-width:0; max-width:1100px; padding:1.2rem 2.2rem 4rem; }
main h1.title { margin-top:.4rem; font-size:2rem; line-height:1.25; } p.description { font-size:1.1rem; color:var(--muted); margin-top:-.4rem; }
h1, h2, h3, h4 { scroll-margin-top:3.5rem; } .anchor-link { visibility:hidden; margin-left:.35rem; font-size:.8em; color:var(--muted); }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility:visible; }
.prompt { display:none; } .cell { margin: .5rem 0; }
.input_area, div.highlight { background:var(--bg-code); border-radius:6px; }
.input_area pre, .highlight pre { margin:0; padding:.7rem .9rem; overflow-x:auto; font-size:.85rem; line-height:1.45; }
.output_area { margin:.3rem 0 .8rem; overflow-x:auto; } .output_area pre { font-size:.84rem; padding:.3rem .9rem; margin:0; white-space:pre-wrap; }
.output_stderr pre { background:#fff5f5; }
.output_png img, .output_jpeg img, .output_svg svg, .rendered_html img { max-width:100%; height:auto; }
.output_markdown h3 { border-top:1px solid var(--border); padding-top:.8rem; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:1.05rem; }
.output_markdown hr { display:none; } p.source-link { float:right; margin:1rem 0 0 1rem; font-size:.8rem; position:relative; z-index:1; }
table { border-collapse:collapse; margin:.6rem 0; font-size:.9rem; } th, td { border:1px solid var(--border); padding:.3rem .6rem; text-align:left; vertical-align:top; }
thead th { background:#f0f3f6; } code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:.88em; background:var(--bg-code); padding:.05rem .25rem; border-radius:3px; }
pre code { background:none; padding:0; } blockquote { margin:.6rem 0; padding:.2rem 1rem; border-left:4px solid var(--border); color:var(--muted); }
.widget-note { border:1px dashed var(--border); border-radius:6px; padding:.6rem .9rem; color:var(--muted); background:#fbfcfd; font-size:.9rem; }
.pager { display:flex; justify-content:space-between; gap:1rem; margin-top:3rem; padding-top:1rem; border-top:1px solid var(--border); }
.pager a { display:block; max-width:48%; } .pager .next { text-align:right; margin-left:auto; }
.chapters li { margin:.25rem 0; } .missing-link { border-bottom:1px dotted var(--muted); cursor:help; }
@media (max-width: 900px) { .layout { display:block; } nav.sidebar { position:static; width:auto; height:auto; border-right:0; border-bottom:1px solid var(--border); } main { padding:1rem; } }
"""

def _count_images(nb) -> int:
    "Image outputs a processed notebook shows (what the page must display)."
    return sum(any(k.startswith('image/') for k in o.get('data', {})) for c in nb.cells
               for o in c.get('outputs', []))

def check_links(docs: dict, errors: list) -> dict:
    """Check every relative link between the pages (file and anchor). A link to a notebook that is not in
    nbs/ (a chapter not written yet) becomes plain text; a link to a missing anchor keeps only its page.
    Each such repair is reported in `errors` (build_warnings.txt; `--strict` fails on them)."""
    from bs4 import BeautifulSoup
    from posixpath import dirname, join, normpath
    soups = {name: BeautifulSoup(doc, 'html.parser') for name, doc in docs.items()}
    ids = {name: {t['id'] for t in soup.find_all(id=True)} | {t['name'] for t in soup.find_all('a', attrs={'name': True})}
           for name, soup in soups.items()}
    for name, soup in soups.items():
        for a in soup.find_all('a', href=True):
            href = a['href']
            if re.match(r'^[a-zA-Z][\w+.-]*:', href) or href.startswith('//'): continue   # http:, mailto:, ...
            path, _, frag = href.partition('#')
            target = normpath(join(dirname(name), path)) if path else name
            if target not in docs:
                errors.append(f"{name}: link to '{href}', which is not a page of the site (a chapter not written yet?)")
                span = soup.new_tag('span', attrs={'class': 'missing-link', 'title': f'{href}: not in this build'})
                span.extend(list(a.contents)); a.replace_with(span)
            elif frag and frag not in ids[target]:
                errors.append(f"{name}: link to '{href}': {target} has no anchor '#{frag}'")
                a['href'] = path or '#'
    return {name: str(soup) for name, soup in soups.items()}

def stylesheet(nbs: Path) -> str:
    "Site CSS: layout + pygments highlighting (+ nbs/styles.css when present)."
    from pygments.formatters import HtmlFormatter
    css = STYLE + HtmlFormatter(style='default').get_style_defs('.highlight')
    if (nbs / 'styles.css').exists(): css += '\n/* nbs/styles.css */\n' + (nbs / 'styles.css').read_text(encoding='utf-8')
    return css

def _md_inline(text: str) -> str:
    "Titles and descriptions may hold `code`: escape, then render backticks."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(str(text)))

def sidebar_html(nav, current: str, up: str, toc) -> str:
    parts, section = [], object()
    parts.append('<ul>')
    for sec, p in nav:
        if sec != section:
            parts.append('</ul>')
            if sec: parts.append(f'<div class="section">{html.escape(sec)}</div>')
            parts.append('<ul>')
            section = sec
        name, title = p['page'], p['short']
        active = ' class="active"' if name == current else ''
        parts.append(f'<li><a href="{up}{name}"{active}>{_md_inline(title)}</a>')
        if name == current and toc:
            parts.append('<ul class="toc">' + ''.join(
                f'<li><a href="#{i}">{html.escape(t)}</a></li>' for lvl, i, t in toc if lvl == 'h2') + '</ul>')
        parts.append('</li>')
    parts.append('</ul>')
    return '\n'.join(parts)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site}</title>
<meta name="description" content="{desc_attr}">
<link rel="stylesheet" href="{up}site.css">
</head>
<body>
<header class="site-header"><a href="{up}index.html">{site}</a><span>{site_desc}</span></header>
<div class="layout">
<nav class="sidebar" aria-label="Chapters">
{sidebar}
</nav>
<main id="content">
<h1 class="title">{title_html}</h1>
{description}
{body}
<nav class="pager">{prev}{next}</nav>
</main>
</div>
</body>
</html>
"""

def _short_title(title: str) -> str:
    "Sidebar label: the part of a chapter title before its first ':' (`Core: the CTCase ...` -> `Core`)."
    return title.split(':', 1)[0].strip() if ':' in title and len(title) > 28 else title


def build_site(out: Path, nbs: Path | None = None, quiet: bool = False, strict: bool = False,
               cache: Path | None = CACHE_DIR, workers: int = DEFAULT_WORKERS) -> list[dict]:
    "Build the whole static site into `out`; return one record per page."
    t0 = time.time()
    cfg = nbdev_config()
    nbs = Path(nbs or cfg.nbs_path)
    settings = site_settings(cfg, nbs)
    nav = navigation(nbs, settings)
    if not nav: raise SystemExit(f"No notebooks found in {nbs}.")
    doc_root = doc_url(cfg)
    pages, errors = [], []
    recs = processed_notebooks([p for _, p in nav], cache, workers, quiet)
    for sec, path in nav:
        rec = recs[path]
        nb, fm = rec['nb'], rec['fm']
        errors += rec['errors']
        title = str(fm.get('title') or path.stem)
        pages.append({'nb': path, 'section': sec, 'page': page_name(path, nbs, fm), 'title': title,
                      'short': _short_title(title), 'description': fm.get('description', ''), 'processed': nb})
    if not any(p['page'] == 'index.html' for p in pages):
        pages.insert(0, {'nb': None, 'section': None, 'page': 'index.html', 'title': settings['title'],
                         'short': 'Home', 'description': settings['description'], 'processed': None})
    nb_to_page = {str(p['nb'].relative_to(nbs)): p['page'] for p in pages if p['nb'] is not None}
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / 'site.css').write_text(stylesheet(nbs), encoding='utf-8')
    navlist = [(p['section'], p) for p in pages]
    docs = {}
    for i, p in enumerate(pages):
        up = '../' * p['page'].count('/')
        if p['processed'] is None:
            body = '<ul class="chapters">' + ''.join(
                f'<li><a href="{q["page"]}">{_md_inline(q["title"])}</a>'
                + (f' – {_md_inline(q["description"])}' if q['description'] else '') + '</li>'
                for q in pages if q is not p) + '</ul>'
            toc = []
        else:
            body = render_body(p['processed'], p['nb'].parent)
            body, toc = fix_html(body, p['page'], nb_to_page, doc_root)
        prev = (f'<a class="prev" href="{up}{pages[i-1]["page"]}">&larr; {_md_inline(pages[i-1]["short"])}</a>'
                if i > 0 else '<span></span>')
        nxt = (f'<a class="next" href="{up}{pages[i+1]["page"]}">{_md_inline(pages[i+1]["short"])} &rarr;</a>'
               if i + 1 < len(pages) else '')
        desc = f'<p class="description">{_md_inline(p["description"])}</p>' if p['description'] else ''
        doc = PAGE.format(title=html.escape(re.sub('`', '', p['title'])), site=html.escape(settings['title']),
                          desc_attr=html.escape(str(p['description']), quote=True), up=up,
                          site_desc=html.escape(str(settings['description'])[:120]),
                          sidebar=sidebar_html(navlist, p['page'], up, toc), title_html=_md_inline(p['title']),
                          description=desc, body=body, prev=prev, next=nxt)
        docs[p['page']] = doc
        if not quiet: print(f"  {p['page']:<28} {p['title']}")
    docs = check_links(docs, errors)
    for name, doc in docs.items():
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(doc, encoding='utf-8')
    (out / '.nojekyll').write_text('')
    manifest = [{'page': p['page'], 'title': p['title'], 'section': p['section'],
                 'notebook': str(p['nb'].relative_to(nbs)) if p['nb'] else None,
                 'figures': _count_images(p['processed']) if p['processed'] is not None else 0} for p in pages]
    (out / 'pages.json').write_text(json.dumps(manifest, indent=1), encoding='utf-8')
    if not quiet: print(f"offline_docs: {len(pages)} pages in {out} ({time.time() - t0:.1f} s)")
    if errors:
        (out / 'build_warnings.txt').write_text('\n'.join(errors) + '\n', encoding='utf-8')
        print(f"offline_docs: {len(errors)} warnings (pages built without API docs, links repaired): "
              f"see {out / 'build_warnings.txt'}", file=sys.stderr)
    if errors and strict: raise SystemExit('offline_docs: --strict and ' + '; '.join(errors))
    return [{k: v for k, v in p.items() if k != 'processed'} for p in pages]


# ---------------------------------------------------------------- README
def build_readme(nbs: Path | None = None, dest: Path | None = None) -> Path | None:
    "README.md from the nbdev-processed index notebook, via nbconvert's MarkdownExporter (no Quarto)."
    from nbconvert import MarkdownExporter
    from traitlets.config import Config
    cfg = nbdev_config()
    nbs = Path(nbs or cfg.nbs_path)
    src = nbs / cfg.get('readme_nb', 'index.ipynb')
    dest = Path(dest or ROOT / 'README.md')
    if not src.exists():
        print(f"offline_docs: {src} does not exist; README.md left as it is.")
        return None
    nb, fm = process_notebook(src)
    clean = to_nbformat(nb, nbs)
    for cell in clean.cells:
        for o in cell.get('outputs', []):
            if 'text/html' in o.get('data', {}) and WIDGET_NOTE in o['data']['text/html']: o['data'] = {}
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    exp = MarkdownExporter(config=c)
    body, res = exp.from_notebook_node(clean, resources={'metadata': {'path': str(nbs)}, 'output_files_dir': f'{dest.stem}_files'})
    head = ''
    if fm.get('title'): head += f"# {fm['title']}\n\n"
    if fm.get('description'): head += f"> {fm['description']}\n\n"
    text = '<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! (made from nbs/index.ipynb) -->\n\n' + head + body.lstrip()
    text = re.sub(r'\n{3,}', '\n\n', text)
    # links to chapters: from the repository top the notebooks are under nbs/
    rel = os.path.relpath(nbs.resolve(), dest.parent.resolve()).replace(os.sep, '/')
    text = re.sub(r'\]\((?![a-z]+:|/|#)([^)\s]+\.ipynb)((?:#[^)\s]*)?)\)',
                  lambda m: f"]({rel}/{m.group(1)}{m.group(2)})" if (nbs / m.group(1)).exists() else m.group(0), text)
    files_dir = dest.parent / f'{dest.stem}_files'
    if res.get('outputs'):
        shutil.rmtree(files_dir, ignore_errors=True)
        for name, data in res['outputs'].items():
            p = dest.parent / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    dest.write_text(text, encoding='utf-8')
    print(f"offline_docs: wrote {dest} from {src.name}")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='output folder for the site (replaced)')
    ap.add_argument('--nbs', default=None, help='notebook folder (default: nbs_path in settings.ini)')
    ap.add_argument('--readme-only', action='store_true', help='only regenerate README.md from the index notebook')
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--strict', action='store_true', help='fail when a notebook cannot be fully processed')
    ap.add_argument('--no-cache', action='store_true', help=f'reprocess every notebook (cache: {CACHE_DIR.relative_to(ROOT)})')
    ap.add_argument('--workers', type=int, default=DEFAULT_WORKERS, help='processes for the nbdev processing')
    a = ap.parse_args(argv)
    if a.readme_only:
        build_readme(a.nbs)
        return 0
    build_site(Path(a.out).resolve(), a.nbs, a.quiet, a.strict, None if a.no_cache else CACHE_DIR, a.workers)
    return 0

if __name__ == '__main__':
    sys.exit(main())
