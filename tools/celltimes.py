#!/usr/bin/env python
"""Time each code cell of a notebook in a fresh kernel, `slow` cells skipped as nbdev_test skips them.

    python tools/celltimes.py nbs/11_touchstone.ipynb [--top 10]

Prints the total and the slowest cells (index, seconds, first line), to find what to cut when a chapter is
over its 90 s budget.
"""
import argparse, json, os, re, sys, time
from pathlib import Path
from execnb.shell import CaptureShell
from nbrun import skipped   # the one rule for which cells nbdev_test skips

ap = argparse.ArgumentParser(); ap.add_argument('nb'); ap.add_argument('--top', type=int, default=10)
a = ap.parse_args()
nb = json.loads(Path(a.nb).read_text())
os.chdir(Path(a.nb).parent)
sh = CaptureShell()
times, t_all = [], time.time()
for i, c in enumerate(nb['cells']):
    if c['cell_type'] != 'code': continue
    src = ''.join(c['source'])
    first = src.lstrip().splitlines()[0] if src.strip() else ''
    if skipped(src): continue
    t0 = time.time(); sh.run(src); dt = time.time() - t0
    if sh.exc: sys.exit(f'cell {i} failed: {sh.exc}')
    times.append((dt, i, src.splitlines()[0][:70] if src else ''))
print(f'{Path(a.nb).name}: {time.time() - t_all:.1f} s in all')
for dt, i, line in sorted(times, reverse=True)[:a.top]:
    print(f'  cell {i:3d} {dt:6.1f} s  {line}')
