"""Benchmark: cohort throughput of report + VQA generation through the batch runner, with 1 and 2 workers
(issue 15).

What is timed is what a user runs, from files, as subprocesses:

    abdomen-nb report --dataset DATA --csv RUN/report/meta.csv --workers W
    abdomen-nb vqa generate DATA --out RUN/vqa/questions.jsonl --workers W

on a cohort of full-resolution phantom cases (512 x 512 x ~300, AbdomenAtlas layout, generated once into
--data and not timed). Every run writes into a fresh run folder, so no case is skipped. For each worker count
the script prints the median wall time of --runs runs, cases per minute, the CPU seconds of the commands and
their descendants (Dask workers included), and the peak memory per worker (the largest per-case peak RSS in
the two manifests). W workers are pinned to W cores (taskset; `--no-pin` to let them float), so that one
worker means one core (the in-process run would otherwise use a second core for the reader's threads).
Scaling efficiency = (cases/min with 2 workers) / (2 x cases/min with 1 worker).

Projection to AbdomenAtlas 3.0 (9,262 cases) on a 16-core machine with 16 workers: 9,262 x (1-worker seconds
per case) / (16 x efficiency), the efficiency measured here at 2 workers assumed to hold at 16 (an assumption:
memory bandwidth and I/O are shared). Target: <= 1 hour. The published report code needs ~460 core-hours.

    .venv/bin/python benchmarks/bench_batch.py [--n 8] [--runs 3] [--data DIR] [--workers 1 2]

On a shared machine wall time includes waiting for a CPU; compare the CPU seconds too.
"""
from __future__ import annotations

import argparse, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

CLI = str(Path(sys.executable).parent / 'abdomen-nb')
ATLAS3_CASES = 9262


def cohort(data: Path, n: int) -> Path:
    "n full-resolution phantom cases in `data` (reused when already there)."
    from abdomen_nb.phantom import make_cohort
    t0 = time.perf_counter()
    make_cohort(n, data, seed=0, size='full', progress=True)   # finished cases are kept
    print(f'cohort: {n} full cases in {data} ({time.perf_counter() - t0:.0f} s to make or check)')
    return data


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list, cores: str | None = None) -> tuple[float, float]:
    "(wall seconds, CPU seconds of the command and everything it waited for); pinned to `cores` if given."
    c0, t0 = child_cpu(), time.perf_counter()
    p = subprocess.run((['taskset', '-c', cores] if cores else []) + cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    if p.returncode: raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return wall, cpu


def one_run(data: Path, workers: int, n: int, pin: bool) -> dict:
    cores = ','.join(map(str, sorted(os.sched_getaffinity(0))[:workers])) if pin else None
    with tempfile.TemporaryDirectory(prefix='bench_batch_') as d:
        out = Path(d)
        w1, c1 = run([CLI, 'report', '--dataset', str(data), '--csv', str(out / 'report' / 'meta.csv'),
                      '--workers', str(workers)], cores)
        w2, c2 = run([CLI, 'vqa', 'generate', str(data), '--out', str(out / 'vqa' / 'questions.jsonl'),
                      '--workers', str(workers)], cores)
        peaks = []
        for m in [out / 'report' / 'meta.csv.parts' / 'manifest.csv', out / 'vqa' / 'manifest.csv']:
            df = pd.read_csv(m)
            assert (df.status == 'done').sum() == n, (m, df.status.value_counts().to_dict())
            peaks.append(df.peak_mb.max())
    return {'wall': w1 + w2, 'report_s': w1, 'vqa_s': w2, 'cpu': c1 + c2, 'peak_mb': max(peaks)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=8, help='full-resolution cases in the cohort')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--data', default=None, help='cohort folder (default: a temporary one)')
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--no-pin', action='store_true', help='do not pin W workers to W cores (taskset)')
    a = ap.parse_args(argv)
    tmp = None
    if a.data is None: tmp = tempfile.mkdtemp(prefix='bench_batch_data_'); a.data = tmp
    try:
        data = cohort(Path(a.data), a.n)
        res = {}
        for w in a.workers:
            runs = [one_run(data, w, a.n, not a.no_pin) for _ in range(a.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            med['peak_mb'] = max(r['peak_mb'] for r in runs)
            res[w] = med
            runs_txt = ', '.join(f"{r['wall']:.1f}" for r in runs)
            print(f"{w} worker{'s' if w > 1 else ' '}: median {med['wall']:6.1f} s for {a.n} cases "
                  f"(report {med['report_s']:.1f} s + vqa {med['vqa_s']:.1f} s) = {60 * a.n / med['wall']:5.1f} "
                  f"cases/min; CPU {med['cpu']:.1f} s ({med['cpu'] / a.n:.1f} s/case); peak per worker "
                  f"{med['peak_mb'] / 1024:.2f} GiB  [runs: {runs_txt} s]")
        if 1 in res:
            per_case = res[1]['wall'] / a.n
            eff = None
            if 2 in res:
                eff = (a.n / res[2]['wall']) / (2 * a.n / res[1]['wall'])
                print(f'scaling efficiency 1 -> 2 workers: {eff:.2f}')
            e = eff if eff else 1.0
            hours = ATLAS3_CASES * per_case / (16 * e) / 3600
            cpu_hours = ATLAS3_CASES * res[1]['cpu'] / a.n / 16 / 3600
            print(f'projection, {ATLAS3_CASES} cases on 16 cores (16 workers): {hours:.2f} h wall '
                  f"(1-worker {per_case:.1f} s/case, efficiency {e:.2f} assumed at 16); from CPU time alone "
                  f'{cpu_hours:.2f} h; {ATLAS3_CASES * per_case / 3600:.1f} core-hours in all (target <= 1 h on 16 cores)')
    finally:
        if tmp: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
