#!/usr/bin/env python
"""Execute a notebook in a fresh kernel and store its outputs in place, `slow` / `eval: false` cells skipped
(they keep what they had), so the docs page shows the chapter's tables and figures.

    python tools/nbrun.py nbs/41_textomorph.ipynb [more notebooks]

Stops at the first failing cell (nothing is written then). Run `make nbclean` afterwards.
"""
import os, re, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell


def skipped(src: str) -> bool:
    "A cell nbdev_test skips: flagged `slow` or `eval: false` (tools/celltimes.py uses this too)."
    flags = ' '.join(l for l in src.splitlines() if re.match(r'\s*#\s*\|', l))
    return bool(re.search(r'\bslow\b|eval:\s*false', flags))


def _progress(o) -> bool:
    "A stderr stream that only holds progress bars (transformers' 'Loading weights', tqdm): not for the page."
    if o.get('output_type') != 'stream' or o.get('name') != 'stderr': return False
    text = ''.join(o.get('text', ''))
    return all(re.search(r'\d+%\|', part) or not part.strip() for part in re.split(r'[\r\n]', text))


def run(path: Path) -> None:
    nb = read_nb(path)
    cwd = os.getcwd(); os.chdir(path.parent)
    try:
        sh = CaptureShell()
        for c in nb.cells:
            if c.cell_type != 'code' or skipped(c.source): continue
            c.outputs = []
            sh.cell(c)
            if sh.exc: sys.exit(f'{path.name}: cell {c.idx_} failed: {sh.exc!r}')
            c.outputs = [o for o in c.outputs if not _progress(o)]
    finally: os.chdir(cwd)
    write_nb(nb, path)
    print(f'{path}: outputs stored')


if __name__ == '__main__':
    for p in sys.argv[1:]: run(Path(p))
