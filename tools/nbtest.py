#!/usr/bin/env python
"""Run every notebook as a test (nbdev_test, `slow` cells skipped) and print the five slowest at the end.

    python tools/nbtest.py [nbdev_test options, e.g. --n_workers 2 --path nbs/11_touchstone.ipynb]

`nbdev_test --timing` prints every notebook's time, but only when all of them pass; this wrapper runs it with
`--do_print` as well and times each notebook from its "Starting" to its "Completed" line, so the five slowest
are printed (against the 90 s budget per notebook) whether the run passes or fails. The exit status is
nbdev_test's.
"""
from __future__ import annotations

import os, re, subprocess, sys, time
from pathlib import Path

BUDGET_S = 90        # each notebook, on 2 cores, slow cells skipped (DEVELOPING.md)
SHOW = 5


def _workers(args: list[str]) -> int:
    "The --n_workers value passed to nbdev_test (its default: the number of CPUs)."
    for i, a in enumerate(args):
        if a == '--n_workers' and i + 1 < len(args): return max(int(args[i + 1]), 1)
        if a.startswith('--n_workers='): return max(int(a.split('=', 1)[1]), 1)
    return os.cpu_count() or 1


def run(args: list[str]) -> int:
    exe = Path(sys.executable).with_name('nbdev_test')
    cmd = [str(exe) if exe.exists() else 'nbdev_test', *args]
    for flag in ('--timing', '--do_print'):
        if flag not in cmd: cmd.append(flag)
    started, took, nbdev_times = {}, {}, {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    for line in proc.stdout:
        now = time.time()
        m = re.match(r'^Starting (.+\.ipynb)\s*$', line)
        if m: started[Path(m.group(1)).name] = now; continue
        m = re.match(r'^- Completed (.+\.ipynb)\s*$', line)
        if m:
            name = Path(m.group(1)).name
            if name in started: took[name] = now - started[name]
            continue
        m = re.match(r'^(\S+\.ipynb): (\d+) secs\s*$', line)
        if m: nbdev_times[m.group(1)] = float(m.group(2)); continue
        sys.stdout.write(line)
    rc = proc.wait()
    times = {**took, **nbdev_times}
    workers = _workers(args)
    if times:
        # the budget is judged on a notebook alone (tools/celltimes.py); here `workers` notebooks share the
        # cores, so each runs about `workers` times slower and is flagged only past that allowance
        allow = BUDGET_S * workers
        print(f"\nThe {min(SHOW, len(times))} slowest notebooks (of {len(times)}; budget {BUDGET_S} s each alone"
              + (f", {allow} s with {workers} notebooks sharing the cores; `python tools/celltimes.py NB` times one alone"
                 if workers > 1 else '') + "):")
        for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:SHOW]:
            print(f"  {t:7.1f} s  {name}{'   OVER BUDGET' if t > allow else ''}")
    unfinished = sorted(set(started) - set(took))
    if unfinished: print(f"  did not finish: {', '.join(unfinished)}")
    return rc


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))
