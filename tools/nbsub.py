#!/usr/bin/env python
"""Replace one exact, unique string in a notebook's cells: `nbsub.py NB OLD_FILE NEW_FILE` (or --old/--new text)."""
import json, sys, argparse
from pathlib import Path

ap = argparse.ArgumentParser(); ap.add_argument('nb'); ap.add_argument('--old'); ap.add_argument('--new')
ap.add_argument('--old-file'); ap.add_argument('--new-file')
a = ap.parse_args()
old = a.old if a.old is not None else Path(a.old_file).read_text()
new = a.new if a.new is not None else Path(a.new_file).read_text()
nb = json.loads(Path(a.nb).read_text())
if not any(old in ''.join(c['source']) for c in nb['cells']) and old.endswith('\n'):
    old, new = old.rstrip('\n'), new.rstrip('\n')   # the text ends a cell (cells keep no final newline)
hits = [c for c in nb['cells'] if old in ''.join(c['source'])]
n = sum(''.join(c['source']).count(old) for c in hits)
if n != 1: sys.exit(f'{n} matches of the old text in {a.nb}')
c = hits[0]; s = ''.join(c['source']).replace(old, new)
c['source'] = s.splitlines(keepends=True)
Path(a.nb).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
print('replaced in a', c['cell_type'], 'cell')
