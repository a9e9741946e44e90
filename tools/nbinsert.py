#!/usr/bin/env python
"""Insert a cell after the (unique) cell containing ANCHOR: `nbinsert.py NB --after ANCHOR --file CELL.txt [--markdown]`."""
import argparse, json, sys, uuid
from pathlib import Path

ap = argparse.ArgumentParser(); ap.add_argument('nb'); ap.add_argument('--after', required=True)
ap.add_argument('--file', required=True); ap.add_argument('--markdown', action='store_true')
a = ap.parse_args()
nb = json.loads(Path(a.nb).read_text())
hits = [i for i, c in enumerate(nb['cells']) if a.after in ''.join(c['source'])]
if len(hits) != 1: sys.exit(f'{len(hits)} cells contain the anchor in {a.nb}')
src = Path(a.file).read_text().rstrip('\n')
cell = {'cell_type': 'markdown', 'id': uuid.uuid4().hex[:8], 'metadata': {}, 'source': src.splitlines(keepends=True)} if a.markdown else \
       {'cell_type': 'code', 'execution_count': None, 'id': uuid.uuid4().hex[:8], 'metadata': {}, 'outputs': [], 'source': src.splitlines(keepends=True)}
nb['cells'].insert(hits[0] + 1, cell)
Path(a.nb).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
print('inserted after cell', hits[0])
