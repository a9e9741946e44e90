#!/usr/bin/env python
"""Build the documentation site without Quarto: nbdev-processed notebooks -> static HTML.

    python tools/offline_docs.py --out _site      # the whole site (what `make docs` runs)
    python tools/offline_docs.py --readme-only    # README.md from nbs/index.ipynb

Every notebook in `nbs/` goes through nbdev's own notebook processors (`nbdev.processors.FilterDefaults`,
the ones `nbdev_docs` runs before Quarto), with three replacements:

* the title cell: `# Title` and every `>` line become the page title and (whole) description, and the
  prose under them stays on the page (nbdev's frontmatter processor drops the whole cell);
* API blocks: nbdev's `exec_show_docs` re-runs the notebook's import and export cells (a cell mixing imports
  with other code then fails with a NameError); here each `show_doc` cell is rendered from the *exported
  module* with nbdev's `show_doc` (signature + docstring + docments via `inspect`), in a namespace of that
  module plus the notebook's import statements. Each block is a `div.api-block[data-symbol]`;
* links: nbdev's `add_links` is replaced by a site-wide pass that links every backticked package symbol,
  module or notebook name to its block or page (never inside code blocks or signatures).

Maths (`$...$`, `$$...$$` outside code; tools/docs_markdown.py) is converted to MathML with latex2mathml at build time (no CDN, no
JavaScript); tqdm progress-bar widgets are dropped, other widgets get a note. The processed notebook is
rendered with nbconvert's `HTMLExporter` (figures embedded as data URIs) and wrapped in a page with a sidebar
(order from `nbs/sidebar.yml` or `_quarto.yml` when they list pages, else the notebook numbers), a pager, one
local stylesheet and a Pagefind search box (`pagefind[bin]` indexes the built pages into `pagefind/`; search
needs the site served over HTTP: `make docs-serve`). Links to the published site and to `*.ipynb` files
become relative links, so the site works from `file://` with no network.

The build FAILS (exit 1, after writing the site and `build_errors.txt`) on any error, each named with its
notebook and cell: a `show_doc` / `exec_doc` cell or import that fails, a stored error output, a broken
internal link or anchor, a missing or remote figure, LaTeX that does not convert. `--allow-errors` writes a
preview and exits 0.
"""
from __future__ import annotations

import argparse, base64, copy, functools, html, json, os, re, shutil, sys, time
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


# ---------------------------------------------------------------- markdown: title cell, maths, figures
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_markdown import (split_header, MathTable, check_figures, _re_h1, _segments,  # noqa: E402
                           _re_display_math, _re_inline_math)


# ---------------------------------------------------------------- API blocks from the exported modules
_re_default_exp = re.compile(r'^[ \t]*#\|[ \t]*default_exp[ \t]+(\S+)', re.M)
_re_export_to = re.compile(r'^[ \t]*#\|[ \t]*export[si]?[ \t]+([\w.]+)[ \t]*$', re.M)
_re_source_line = re.compile(r'^\[source\]\([^)]*\)(\{[^}]*\})?\s*$', re.M)

def notebook_modules(nb) -> list[str]:
    "Modules a notebook exports to (`default_exp`, then any `#| export other_module`), dotted under the package."
    mods = []
    for c in nb.cells:
        if c.cell_type != 'code': continue
        for m in _re_default_exp.findall(c.source) + _re_export_to.findall(c.source):
            if m not in mods: mods.append(m)
    return mods

def _parse_cell(src: str):
    "The cell's AST (IPython magics and shell lines left out), or None."
    import ast
    lines = ['' if re.match(r'^\s*[%!]', l) else l for l in src.splitlines()]
    try: return ast.parse('\n'.join(lines))
    except SyntaxError: return None

def _cell_ref(i: int, src: str) -> str:
    first = next((l.strip() for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#|')), '')
    return f"cell {i} ({first[:70]!r})"

class ApiDocs:
    """nbdev processor in place of `exec_show_docs`: renders each `show_doc` cell from the *exported module*
    (signature and docstring through nbdev's own `show_doc`, read with `inspect`), so the page's API blocks
    never depend on re-running the notebook's other cells. The namespace holds the modules the notebook
    exports to and the notebook's top-level import statements (taken out of any cell, mixed or not).
    `#| exec_doc` cells run in that namespace too. Every failure is recorded with the notebook and cell."""
    def __init__(self, nb, name: str, errors: list, lib: str):
        self.nb, self.name, self.errors, self.lib, self.symbols, self.last = nb, name, errors, lib, [], 0

    def _err(self, cell, what: str, e: BaseException):
        i = getattr(cell, 'orig_idx_', None)
        ref = (_cell_ref(i, cell.source) if i is not None else
               f"the API block `{cell.source.strip().splitlines()[-1][:80]}` made for cell {self.last}")
        self.errors.append(f"{self.name}: {ref}: {what}: {type(e).__name__}: {e}")

    def begin(self):
        import ast, importlib
        self.ns = ns = {}
        for c in self.nb.cells:                                  # the notebook's imports, in order
            if c.cell_type != 'code' or getattr(c, 'eval_false_', False): continue
            tree = _parse_cell(c.source)
            for node in (tree.body if tree else []):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    try: exec(compile(ast.Module([node], []), f'<{self.name}>', 'exec'), ns)
                    except Exception as e: self._err(c, f'the import `{ast.unparse(node)}` fails', e)
        for mod in self.modules:                                 # the exported code, as the package has it
            try: ns.update(vars(importlib.import_module(f'{self.lib}.{mod}')))
            except Exception as e:
                self.errors.append(f"{self.name}: importing {self.lib}.{mod} fails ({type(e).__name__}: {e}); "
                                   "run nbdev_export and fix the module")
        from nbdev.showdoc import show_doc
        ns['show_doc'] = show_doc

    def _run(self, src: str):
        import ast, contextlib, io
        tree = _parse_cell(src)
        if tree is None: raise SyntaxError('the cell does not parse')
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(tree, f'<{self.name}>', 'exec'), self.ns)
            return eval(compile(ast.Expression(last.value), f'<{self.name}>', 'eval'), self.ns) if last else None

    def __call__(self, cell):
        from nbdev.processors import _is_showdoc
        if getattr(cell, 'orig_idx_', None) is not None: self.last = cell.orig_idx_
        if cell.cell_type != 'code' or not hasattr(self, 'ns'): return
        if 'exec_doc' in cell.directives_:
            try: self._run(cell.source)
            except Exception as e: self._err(cell, 'the exec_doc cell fails', e)
        if not _is_showdoc(cell): return
        try: res = self._run(cell.source)
        except Exception as e:
            hint = (' (the name is not in the exported module: is the cell `#| export`ed and nbdev_export run?)'
                    if isinstance(e, NameError) else '')
            self._err(cell, 'show_doc fails', e); self.errors[-1] += hint; cell.outputs = []; return
        if not hasattr(res, '_repr_markdown_'): return
        import ast
        call = next((n for n in ast.walk(_parse_cell(cell.source)) if isinstance(n, ast.Call)
                     and getattr(n.func, 'id', '') == 'show_doc' and n.args), None)
        shown = ast.unparse(call.args[0]) if call is not None else getattr(res.fn, '__qualname__', '')
        cell.outputs = [{'output_type': 'display_data', 'metadata': {},
                         'data': {'text/x-api-block': json.dumps(self.block(res, shown))}}]

    def block(self, res, shown: str) -> dict:
        "What the page shows for one symbol: nbdev's show_doc markdown (source link rebuilt) + where it lives."
        import inspect
        obj = res.fn
        md = _re_source_line.sub('', res._repr_markdown_()).strip()
        md = re.sub(r'^---\s*\n', '', md)
        # show_doc types an unannotated `x=None` as `x:NoneType=None`, which reads as "x must be None"
        md = re.sub(r'(\w):NoneType=None\b', r'\1=None', md)
        mod = getattr(inspect.unwrap(obj) if callable(obj) else obj, '__module__', None) or ''
        src = None
        try:
            target = inspect.unwrap(obj)
            line = inspect.getsourcelines(target)[1]
            path = Path(inspect.getsourcefile(target)).resolve()
            rel = path.relative_to(ROOT).as_posix()
            src = f"{self.repo}/blob/{self.branch}/{rel}#L{line}" if self.repo else None
        except (TypeError, OSError, ValueError): pass
        sym = f'{mod}.{shown}' if mod.startswith(self.lib) else shown
        self.symbols.append({'shown': shown, 'symbol': sym, 'module': mod})
        return {'md': md, 'symbol': sym, 'shown': shown, 'module': mod, 'source': src}


# ---------------------------------------------------------------- nbdev processing
def _read_for_docs(path: Path, errors: list):
    "The notebook, with its title cell split into frontmatter + body and each cell's original index kept."
    from execnb.nbio import read_nb, mk_cell
    import yaml
    nb = read_nb(path)
    for i, c in enumerate(nb.cells): c.orig_idx_ = i
    for c in nb.cells:
        if c.cell_type == 'code' and re.search(r'^\s*#\|\s*eval:\s*false\s*$', c.source, re.M | re.I): c.eval_false_ = True
    k = next((i for i, c in enumerate(nb.cells) if c.cell_type == 'markdown' and any(_re_h1.match(l) for l in (c.source or '').split('\n'))), None)
    raw_fm = next((c for c in nb.cells if c.cell_type == 'raw' and c.source.lstrip().startswith('---')), None)
    if k is not None and raw_fm is None:
        fm, body = split_header(nb.cells[k].source)
        if fm:
            nb.cells[k].source = body
            fmc = mk_cell('---\n' + yaml.safe_dump(fm, allow_unicode=True, sort_keys=False) + '---', 'raw')
            fmc.orig_idx_ = k
            nb.cells.insert(0, fmc)
    return nb

def process_notebook(path: Path, errors: list | None = None, api: list | None = None):
    """Run nbdev's docs processors on one notebook; return (processed nb, frontmatter dict).
    nbdev's `exec_show_docs` (which re-runs the notebook's import and export cells) is replaced by `ApiDocs`
    (API blocks from the exported module) and nbdev's `add_links` by the site-wide linker of `build_site`.
    Problems are appended to `errors` ('<notebook>: cell N (...): what'); the API symbols shown to `api`."""
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults, exec_show_docs, add_links
    errors = [] if errors is None else errors
    cfg = nbdev_config()
    nb = _read_for_docs(path, errors)
    proc = ApiDocs(nb, path.name, errors, cfg.lib_name)
    proc.modules = notebook_modules(nb)
    proc.repo, proc.branch = cfg.get('git_url', '').rstrip('/'), cfg.get('branch', 'main')
    procs = [proc if p is exec_show_docs else p for p in FilterDefaults().procs() if p is not add_links]
    old, cwd = os.environ.get('IN_TEST'), os.getcwd()
    os.environ['IN_TEST'] = '1'          # as nbdev's serve_drv does: no slow work in show_doc
    import warnings
    try:
        os.chdir(path.parent)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            NBProcessor(nb=nb, procs=procs).process()
    finally:
        os.chdir(cwd)
        if old is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = old
    if api is not None: api += proc.symbols
    fm = {}
    if nb.cells and nb.cells[0].cell_type == 'raw' and nb.cells[0].source.lstrip().startswith('---'):
        import yaml
        fm = yaml.safe_load(nb.cells[0].source.strip().strip('-')) or {}
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

_re_progress = re.compile(r'\d+%\|.*\|\s*\d+/\d*|it/s\]|s/it\]')

def is_progress_bar(o: dict) -> bool:
    "A tqdm (or transformers) progress-bar widget: its stored text is only the bar's first state, so it is dropped."
    data = o.get('data') or {}
    text = data.get('text/plain', '')
    text = ''.join(text) if isinstance(text, list) else text
    return WIDGET_MIME in data and bool(_re_progress.search(text) or text.startswith(('HBox(', 'FloatProgress(', 'IntProgress(')))

def _clean_output(o: dict) -> dict | None:
    o = copy.deepcopy(dict(o))
    join = lambda v: ''.join(v) if isinstance(v, list) else v   # noqa: E731  (nbformat's split lines)
    if 'text' in o: o['text'] = join(o['text'])
    data = o.get('data')
    if data is not None:
        if is_progress_bar(o): return None
        data = o['data'] = {k: (v if k.endswith('json') else join(v)) for k, v in data.items()}
        if WIDGET_MIME in data:
            return {'output_type': 'display_data', 'metadata': {}, 'data': {'text/html': WIDGET_NOTE}}
        if 'text/markdown' in data: data['text/markdown'] = _fix_markdown(data['text/markdown'])
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

def _const_anchors(src: str, public: set) -> list[str]:
    "Public module-level constants an export cell assigns (they get an anchor for backticked links)."
    import ast
    tree = _parse_cell(src)
    names = []
    for node in (tree.body if tree else []):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id in public and n.id not in names: names.append(n.id)
    return names

def to_nbformat(nb, nbs_dir: Path, name: str = '', errors: list | None = None, math: MathTable | None = None,
                public: dict | None = None):
    """A clean nbformat notebook for nbconvert: directives applied, progress bars dropped, other widgets
    replaced by a note, maths replaced by placeholders (`math`), API blocks as HTML, figures checked."""
    import nbformat
    errors = [] if errors is None else errors
    cells, last_idx = [], 0
    for c in _reorder_show_docs(list(nb.cells)):
        src = c.source if isinstance(c.source, str) else ''.join(c.source)
        idx = c.get('orig_idx_', None)
        if idx is not None: last_idx = idx
        where = f"{name}: {_cell_ref(last_idx, src)}"
        if c.cell_type == 'markdown':
            src = _fix_markdown(src)
            if not src.strip() or src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            check_figures(src, c.get('attachments'), nbs_dir, where, errors)
            if math is not None: src = math.extract(src, where, errors)
            cell = nbformat.v4.new_markdown_cell(src)
            if c.get('attachments'): cell['attachments'] = c['attachments']
        elif c.cell_type == 'code':
            d, body = _directives(src)
            if _false(d.get('include', 'true')): continue
            for o in c.get('outputs', []) or []:
                if o.get('output_type') == 'error':
                    errors.append(f"{where}: the stored output is an error ({o.get('ename')}: {str(o.get('evalue'))[:200]}); "
                                  "re-run the notebook and fix the cell")
            cell = nbformat.v4.new_code_cell(body)
            outs = [] if _false(d.get('output', 'true')) else [o for o in map(_clean_output, c.get('outputs', []) or []) if o]
            for o in outs:
                data = o.get('data', {})
                if 'text/x-api-block' in data:
                    o['data'] = {'text/html': api_block_html(json.loads(data['text/x-api-block']), math, where, errors)}
                elif 'text/markdown' in data and math is not None:
                    data['text/markdown'] = math.extract(data['text/markdown'], where, errors)
            cell['outputs'] = [nbformat.from_dict(o) for o in outs if o.get('output_type') != 'error']
            tags = []
            if _false(d.get('echo', 'true')) or not body.strip(): tags.append('remove_input')
            if not cell['outputs'] and 'remove_input' in tags: continue
            cell['metadata']['tags'] = tags
            if 'code-fold' in d and not _false(d['code-fold']): cell['metadata']['fold'] = True
            if public and any(k in c.get('directives_', {}) for k in ('export', 'exports')):
                consts = _const_anchors(body, public)
                if consts:
                    anchors = ''.join(f'<span class="api-anchor" id="{pandoc_id(n)}" data-symbol="{html.escape(public[n])}"></span>'
                                      for n in consts)
                    cells.append(nbformat.v4.new_markdown_cell(f'<div class="api-anchors">{anchors}</div>'))
        else:
            continue   # raw cells are Quarto/LaTeX material
        cells.append(cell)
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata['language_info'] = {'name': 'python'}
    return out

def api_block_html(b: dict, math: MathTable | None, where: str, errors: list) -> str:
    "One API block: heading (the anchor backticked names link to), signature, docstring, source link."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    md = b['md']
    if math is not None: md = math.extract(md, where, errors)
    inner = markdown2html_mistune(md)
    src = (f'<p class="source-link"><a href="{html.escape(b["source"], quote=True)}">source</a></p>'
           if b.get('source') else '')
    return (f'<div class="api-block" data-symbol="{html.escape(b["symbol"], quote=True)}" '
            f'data-module="{html.escape(b["module"], quote=True)}">{src}{inner}</div>')


# ---------------------------------------------------------------- processing many notebooks, with a cache
CACHE_DIR = ROOT / '_proc' / 'offline_docs'   # ignored by git; `make clean` removes it
DEFAULT_WORKERS = 1   # more workers each import the package's heavy dependencies again: rarely faster on 2 cores

def _cache_key(path: Path) -> str:
    "Changes when the notebook, settings.ini, this script or any module of the package change."
    import hashlib
    h = hashlib.sha256()
    files = [path, ROOT / 'settings.ini', Path(__file__), *sorted((ROOT / 'abdomen_nb').glob('*.py'))]
    for f in files: h.update(f.read_bytes() if f.exists() else b'')
    h.update(str(path.resolve()).encode())
    return h.hexdigest()[:32]

@functools.lru_cache(maxsize=None)
def public_symbols(lib: str | None = None) -> dict:
    "name -> 'package.module.name' for every name in a module's `__all__` (first module wins)."
    import importlib, pkgutil
    lib = lib or nbdev_config().lib_name
    out = {}
    try: pkg = importlib.import_module(lib)
    except ImportError: return out
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name.startswith('_'): continue
        try: mod = importlib.import_module(f'{lib}.{m.name}')
        except Exception: continue
        for n in getattr(mod, '__all__', []): out.setdefault(n, f'{lib}.{m.name}.{n}')
    return out

def _process_for_site(path: str) -> dict:
    "Worker: nbdev processing, clean-up and HTML of one notebook, as JSON-friendly data."
    p, errors, api = Path(path), [], []
    raw = json.loads(p.read_text(encoding='utf-8'))
    shown = sum(any(k.startswith('image/') for k in o.get('data', {})) for c in raw['cells'] if c['cell_type'] == 'code'
                and not re.search(r'^\s*#\|\s*(hide|include:\s*false|output:\s*false)\s*$', ''.join(c['source']), re.M)
                for o in c.get('outputs', []))
    nb, fm = process_notebook(p, errors, api)
    math = MathTable(p.stem)
    mods = notebook_modules(nb)
    lib = nbdev_config().lib_name
    public = {n: s for n, s in (public_symbols(lib) if mods else {}).items() if any(s == f'{lib}.{m}.{n}' for m in mods)}
    clean = to_nbformat(nb, p.parent, p.name, errors, math, public)
    body = math.substitute(render_body(clean, p.parent))
    for src in re.findall(r'<img\b[^>]*?\bsrc="([^"]+)"', body):
        if not src.startswith('data:') and not any(f"'{src}'" in e for e in errors): errors.append(f"{p.name}: figure '{src[:80]}' is not embedded in the page (missing file?)")
    return {'body': body, 'fm': json.loads(json.dumps(fm, default=str)), 'errors': errors, 'api': api,
            'modules': [f'{lib}.{m}' for m in mods], 'figures': _count_images(clean), 'notebook_figures': shown,
            'maths': len(math.items)}

def processed_notebooks(paths, cache: Path | None = CACHE_DIR, workers: int = DEFAULT_WORKERS, quiet=False) -> dict:
    """Process notebooks (in `workers` separate processes when > 1), reusing cached results for unchanged
    notebooks. Pages with errors are not cached."""
    out, todo = {}, []
    for p in paths:
        hit = None
        f = cache / f'{_cache_key(p)}.json' if cache else None
        if f is not None and f.exists():
            try: hit = json.loads(f.read_text(encoding='utf-8'))
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
        out[p] = rec
        if cache and not rec['errors']:
            key = _cache_key(p)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f'.{key}.{os.getpid()}.tmp'
            tmp.write_text(json.dumps(rec), encoding='utf-8'); os.replace(tmp, cache / f'{key}.json')
    return out

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
        a = soup.new_tag('a', href=f'#{new}', attrs={'class': 'anchor-link', 'data-pagefind-ignore': ''}); a.string = '#'
        h.append(a)
        if h.name in ('h2', 'h3') and not h.find_parent(class_=['output_markdown', 'api-block']): toc.append((h.name, new, text))
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
.site-header a { color:#fff; font-weight:600; font-size:1.1rem; white-space:nowrap; } .site-header span { color:#cfe0f0; font-size:.8rem; line-height:1.3; }
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
.api-block { border-top:1px solid var(--border); margin:1.2rem 0 .6rem; padding-top:.2rem; }
.api-block h3, .api-block h4 { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:1.05rem; margin:.6rem 0 .4rem; }
.api-block p.source-link { float:right; margin:.7rem 0 0 1rem; font-size:.8rem; }
.api-block hr { display:none; } .api-anchors { height:0; } math[display="block"] { margin:.6rem 0; overflow-x:auto; }
.site-search { margin-left:auto; min-width:18rem; max-width:28rem; flex:0 1 28rem; position:relative; }
.site-search .search-note { color:#cfe0f0; font-size:.8rem; }
.site-search .pagefind-ui__drawer { position:absolute; right:0; left:0; background:#fff; color:var(--fg); max-height:75vh; overflow-y:auto;
  border:1px solid var(--border); border-radius:6px; box-shadow:0 6px 24px rgba(0,0,0,.18); padding:0 .8rem; }
.site-search .pagefind-ui__drawer:empty, .site-search .pagefind-ui__drawer:not(:has(*)) { display:none; }
.site-search .pagefind-ui { --pagefind-ui-scale:.72; --pagefind-ui-primary:#0b63c5; }
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

def link_symbols(docs: dict, order: list[str], modules: dict, notebooks: dict | None = None) -> dict:
    """Link every backticked package symbol to its API block: `make_case`, `phantom.make_case`,
    `abdomen_nb.phantom.make_case`, `CTCase.crop` and `make_case()` all link to the block of that name (on the
    page itself first, else on the first page that documents it). Constants link to their anchor, module
    names (`core`, `abdomen_nb.core`) and notebook names (`21_report`, `21_report.ipynb`) to their chapter. Code blocks, headings and existing links are left as
    they are; a name with no block stays plain code."""
    from bs4 import BeautifulSoup
    soups = {name: BeautifulSoup(doc, 'html.parser') for name, doc in docs.items()}
    table: dict[str, list[tuple[str, str]]] = {}
    def add(key, page, anchor):
        lst = table.setdefault(key, [])
        if (page, anchor) not in lst: lst.append((page, anchor))
    for page in order:
        for el in soups[page].select('.api-block[data-symbol], .api-anchor[data-symbol]'):
            h = el if 'api-anchor' in el.get('class', []) else el.find(['h2', 'h3', 'h4'], id=True)
            if h is None: continue
            sym, anchor = el['data-symbol'], h['id']
            parts = sym.split('.')
            shown = el.find(['h2', 'h3', 'h4']).get_text(strip=True).rstrip('#').strip() if h is not el else parts[-1]
            keys = {shown, sym}
            if len(parts) >= 3: keys |= {'.'.join(parts[1:]), f"{parts[1]}.{shown}", f"{parts[0]}.{parts[1]}.{shown}"}
            for k in keys: add(k, page, anchor)
    bare = {m.split('.')[-1] for m in modules} - set(table)
    for mod, page in modules.items():
        add(mod, page, '')
        if mod.split('.')[-1] in bare: add(mod.split('.')[-1], page, '')
    for nb, page in (notebooks or {}).items():
        add(nb, page, ''); add(Path(nb).stem, page, '')
    for name, soup in soups.items():
        up = '../' * name.count('/')
        main = soup.find('main') or soup
        for code in main.find_all('code'):
            if code.find_parent(['pre', 'a', 'h1', 'h2', 'h3', 'h4']) or code.find(True): continue
            key = code.get_text().strip()
            key = key[:-2] if key.endswith('()') else key
            hits = table.get(key)
            if not hits: continue
            page, anchor = next(((p, a) for p, a in hits if p == name), hits[0])
            href = (up + page if page != name else '') + (f'#{anchor}' if anchor else '')
            if not href: continue                                    # the page's own module name
            a = soup.new_tag('a', href=href, attrs={'class': 'api-link'})
            code.wrap(a)
    return {name: str(soup) for name, soup in soups.items()}

def check_links(docs: dict, errors: list) -> dict:
    """Check every relative link between the pages (file and anchor). Each broken one is an error (the build
    fails); in the pages written anyway, a link to a page that does not exist becomes plain text and a link to
    a missing anchor keeps only its page."""
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
                errors.append(f"{name}: broken link '{href}': no page {target} in the site (link a notebook that exists, "
                              "or write the name as plain text until its chapter lands)")
                span = soup.new_tag('span', attrs={'class': 'missing-link', 'title': f'{href}: not in this build'})
                span.extend(list(a.contents)); a.replace_with(span)
            elif frag and frag not in ids[target]:
                errors.append(f"{name}: broken link '{href}': {target} has no anchor '#{frag}'")
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
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{up}site.css">
</head>
<body>
<header class="site-header"><a href="{up}index.html">{site}</a><span>{site_desc}</span>
<div id="search" class="site-search" data-pagefind-ignore></div></header>
<div class="layout">
<nav class="sidebar" aria-label="Chapters" data-pagefind-ignore>
{sidebar}
</nav>
<main id="content" data-pagefind-body>
<h1 class="title">{title_html}</h1>
{description}
{body}
<nav class="pager" data-pagefind-ignore>{prev}{next}</nav>
</main>
</div>
<script>{search_js}</script>
</body>
</html>
"""

# The search box: Pagefind's UI, loaded from the site's own pagefind/ folder. Pagefind fetches its index, which
# browsers refuse over file://, so there the box says how to serve the site instead.
SEARCH_JS = """
(function () {
  var up = %s, box = document.getElementById('search');
  if (location.protocol === 'file:') {
    box.innerHTML = '<span class="search-note" title="Search reads its index over HTTP">Search: serve the site with <code>make docs-serve</code></span>';
    return;
  }
  var css = document.createElement('link'); css.rel = 'stylesheet'; css.href = up + 'pagefind/pagefind-ui.css';
  document.head.appendChild(css);
  var s = document.createElement('script'); s.src = up + 'pagefind/pagefind-ui.js';
  s.onload = function () {
    new PagefindUI({element: '#search', showSubResults: true, showImages: false, resetStyles: false,
                    baseUrl: new URL(up || './', location.href).pathname});
  };
  document.head.appendChild(s);
})();
"""

def _short_title(title: str) -> str:
    "Sidebar label: the part of a chapter title before its first ':' (`Core: the CTCase ...` -> `Core`)."
    return title.split(':', 1)[0].strip() if ':' in title and len(title) > 28 else title

def search_index(out: Path, errors: list, quiet: bool = False):
    "Pagefind's offline full-text index of the built pages (pagefind/ inside the site)."
    import subprocess
    r = subprocess.run([sys.executable, '-m', 'pagefind', '--site', str(out), '--output-subdir', 'pagefind',
                        *(['--quiet'] if quiet else [])], capture_output=True, text=True)
    if r.returncode != 0 or not (out / 'pagefind' / 'pagefind-ui.js').exists():
        errors.append("site: pagefind could not index the site (install the binary with pip install 'pagefind[bin]'): "
                      + (r.stderr or r.stdout).strip()[-500:])
    elif not quiet: print('offline_docs: ' + (r.stdout.strip().splitlines() or ['pagefind: indexed'])[-1])


class DocsBuildError(SystemExit):
    "The site has errors (cell errors, broken links, missing figures): each is listed in build_errors.txt."


def build_site(out: Path, nbs: Path | None = None, quiet: bool = False, allow_errors: bool = False,
               cache: Path | None = CACHE_DIR, workers: int = DEFAULT_WORKERS, search: bool = True) -> list[dict]:
    """Build the whole static site into `out`; return one record per page. Any error (a cell that fails to
    render, a stored error output, a broken internal link, a missing figure, maths that does not convert)
    raises `DocsBuildError` (exit status 1) after the site is written, unless `allow_errors`."""
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
        fm = rec['fm']
        errors += rec['errors']
        title = str(fm.get('title') or path.stem)
        pages.append({'nb': path, 'section': sec, 'page': page_name(path, nbs, fm), 'title': title,
                      'short': _short_title(title), 'description': fm.get('description', ''), 'rec': rec})
    if not any(p['page'] == 'index.html' for p in pages):
        pages.insert(0, {'nb': None, 'section': None, 'page': 'index.html', 'title': settings['title'],
                         'short': 'Home', 'description': settings['description'], 'rec': None})
    nb_to_page = {str(p['nb'].relative_to(nbs)): p['page'] for p in pages if p['nb'] is not None}
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / 'site.css').write_text(stylesheet(nbs), encoding='utf-8')
    navlist = [(p['section'], p) for p in pages]
    docs = {}
    for i, p in enumerate(pages):
        up = '../' * p['page'].count('/')
        if p['rec'] is None:
            body = '<ul class="chapters">' + ''.join(
                f'<li><a href="{q["page"]}">{_md_inline(q["title"])}</a>'
                + (f' – {_md_inline(q["description"])}' if q['description'] else '') + '</li>'
                for q in pages if q is not p) + '</ul>'
            toc = []
        else:
            body, toc = fix_html(p['rec']['body'], p['page'], nb_to_page, doc_root)
        prev = (f'<a class="prev" href="{up}{pages[i-1]["page"]}">&larr; {_md_inline(pages[i-1]["short"])}</a>'
                if i > 0 else '<span></span>')
        nxt = (f'<a class="next" href="{up}{pages[i+1]["page"]}">{_md_inline(pages[i+1]["short"])} &rarr;</a>'
               if i + 1 < len(pages) else '')
        desc = f'<p class="description">{_md_inline(p["description"])}</p>' if p['description'] else ''
        doc = PAGE.format(title=html.escape(re.sub('`', '', p['title'])), site=html.escape(settings['title']),
                          desc_attr=html.escape(str(p['description']), quote=True), up=up,
                          site_desc=html.escape(str(settings['description'])),
                          sidebar=sidebar_html(navlist, p['page'], up, toc), title_html=_md_inline(p['title']),
                          description=desc, body=body, prev=prev, next=nxt, search_js=SEARCH_JS % json.dumps(up))
        docs[p['page']] = doc
        if not quiet: print(f"  {p['page']:<28} {p['title']}")
    modules = {m: p['page'] for p in pages if p['rec'] for m in p['rec']['modules'][:1]}
    docs = link_symbols(docs, [p['page'] for p in pages], modules, nb_to_page)
    docs = check_links(docs, errors)
    for name, doc in docs.items():
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(doc, encoding='utf-8')
    (out / '.nojekyll').write_text('')
    manifest = [{'page': p['page'], 'title': p['title'], 'section': p['section'], 'description': p['description'],
                 'notebook': str(p['nb'].relative_to(nbs)) if p['nb'] else None,
                 'modules': p['rec']['modules'] if p['rec'] else [], 'api': p['rec']['api'] if p['rec'] else [],
                 'figures': p['rec']['figures'] if p['rec'] else 0,
                 'notebook_figures': p['rec']['notebook_figures'] if p['rec'] else 0, 'maths': p['rec']['maths'] if p['rec'] else 0}
                for p in pages]
    (out / 'pages.json').write_text(json.dumps(manifest, indent=1), encoding='utf-8')
    if search and (not errors or allow_errors): search_index(out, errors, quiet)
    if not quiet: print(f"offline_docs: {len(pages)} pages in {out} ({time.time() - t0:.1f} s)")
    if errors:
        (out / 'build_errors.txt').write_text('\n'.join(errors) + '\n', encoding='utf-8')
        print(f"offline_docs: {len(errors)} error(s):\n  " + '\n  '.join(errors), file=sys.stderr)
        if not allow_errors:
            raise DocsBuildError(f"offline_docs: the docs build FAILED with {len(errors)} error(s), listed above and in "
                                 f"{out / 'build_errors.txt'}")
    return [{k: v for k, v in p.items() if k != 'rec'} for p in pages]


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
    ap.add_argument('--allow-errors', action='store_true',
                    help='write the site and exit 0 even with errors (a preview; CI and make docs never use it)')
    ap.add_argument('--no-search', action='store_true', help='skip the pagefind search index')
    ap.add_argument('--no-cache', action='store_true', help=f'reprocess every notebook (cache: {CACHE_DIR.relative_to(ROOT)})')
    ap.add_argument('--workers', type=int, default=DEFAULT_WORKERS, help='processes for the nbdev processing')
    a = ap.parse_args(argv)
    if a.readme_only:
        build_readme(a.nbs)
        return 0
    build_site(Path(a.out).resolve(), a.nbs, a.quiet, a.allow_errors, None if a.no_cache else CACHE_DIR, a.workers,
               search=not a.no_search)
    return 0

if __name__ == '__main__':
    sys.exit(main())
