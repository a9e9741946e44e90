#!/usr/bin/env python
"""Write a notebook from a plain-text cell script (for drafting chapters outside Jupyter).

    python tools/nbbuild.py SCRIPT.py OUT.ipynb

The script is split into cells at lines `# %% [markdown]` (a markdown cell: its lines start with `# `,
which is removed) and `# %%` (a code cell). The notebook gets the project's python3 kernelspec. After
writing, run `nbdev_export` and `make nbclean`; the notebook, not the script, is the source of truth.
"""
from __future__ import annotations
import json, sys
from pathlib import Path


def cells_of(text: str) -> list[dict]:
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = '\n'.join(buf).strip('\n')
        if kind == 'markdown':
            src = '\n'.join(l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in src.split('\n'))
        if src.strip():
            c = dict(cell_type=kind, metadata={}, source=src.splitlines(keepends=True))
            if kind == 'code': c.update(execution_count=None, outputs=[])
            cells.append(c)
    for line in text.split('\n'):
        if line.startswith('# %% [markdown]'): flush(); kind, buf = 'markdown', []
        elif line.startswith('# %%'): flush(); kind, buf = 'code', []
        else: buf.append(line)
    flush()
    return cells


def main(argv):
    src, out = Path(argv[0]), Path(argv[1])
    nb = dict(cells=cells_of(src.read_text()), nbformat=4, nbformat_minor=5,
              metadata={'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}})
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    print(f'{out}: {len(nb["cells"])} cells')


if __name__ == '__main__': main(sys.argv[1:])
