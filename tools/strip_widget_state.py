#!/usr/bin/env python
"""Prepare notebooks for commit: remove stored widget state (ipyniivue stores ~5 MB of JavaScript per
notebook there) and set the kernelspec, so that `make lab` opens each notebook on the venv's kernel
without asking which one.

    python tools/strip_widget_state.py nbs/*.ipynb

The kernelspec names `python3`, the kernel `make lab` installs into .venv (`ipykernel install --sys-prefix`).
`nbdev_clean` keeps the kernelspec (it is one of the metadata keys it always keeps) but rewrites its
display name to the kernel name; JupyterLab chooses the kernel by name, so either display name works.
A notebook that is already clean is left byte for byte as it is.
"""
import json, sys

KERNELSPEC = {'name': 'python3', 'display_name': 'Python 3 (abdomen_nb)', 'language': 'python'}


def prepare(nb: dict) -> list[str]:
    "Strip widget state and set the kernelspec in place; return what changed."
    md, changed = nb.setdefault('metadata', {}), []
    if md.pop('widgets', None) is not None: changed.append('widget state removed')
    ks = md.get('kernelspec') or {}
    if ks.get('name') != KERNELSPEC['name'] or ks.get('language') != KERNELSPEC['language']:
        md['kernelspec'] = dict(KERNELSPEC); changed.append('kernelspec set to python3')
    return changed


def main(paths) -> int:
    for path in paths:
        with open(path, encoding='utf-8') as f: nb = json.load(f)
        changed = prepare(nb)
        if changed:
            with open(path, 'w', encoding='utf-8') as f: json.dump(nb, f, indent=1, ensure_ascii=False); f.write('\n')
            print(f"{path}: {', '.join(changed)}")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
