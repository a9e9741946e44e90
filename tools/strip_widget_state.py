#!/usr/bin/env python
"""Remove stored widget state from notebooks (ipyniivue stores ~5 MB of JavaScript per notebook there).

    python tools/strip_widget_state.py nbs/*.ipynb
"""
import json, sys

for path in sys.argv[1:]:
    with open(path) as f: nb = json.load(f)
    if nb.get('metadata', {}).pop('widgets', None) is not None:
        with open(path, 'w') as f: json.dump(nb, f, indent=1, ensure_ascii=False); f.write('\n')
        print(f'{path}: widget state removed')
