"""Label Critic speed on a full-size case (512 x 512 in-plane).

1. In process: the published frontal projection (bone window, 1 x 1 mm, 512 px) plus the anatomy critic's
   verdict and the label projection of every organ of the case. Target: under 2 s per case on one core.
2. The command a user runs, from files: `abdomen-nb critic DATASET --candidates A B --overwrite` on a one-case
   dataset with two candidate folders (the true labels and a shifted copy, 3 organs): read, 2D-Dice pass,
   choice + check, labels and decision written.

Prints the median (and min/max) of several runs of each, wall and CPU time.
Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_critic.py [--runs 5] [--size full]
"""
import os
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
import argparse, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

from abdomen_nb import critic as C
from abdomen_nb.core import AtlasDataset, CTCase, write_case


def synthetic_full(seed=0):
    "A 512 x 512 x 300 stand-in (0.8 x 0.8 x 1.5 mm) when the phantom's 'full' size is not available."
    from abdomen_nb.critic_images import _synthetic_case
    small = _synthetic_case(seed)
    from scipy import ndimage
    f = [512 / 112, 512 / 96, 300 / 72]
    ct = ndimage.zoom(small.ct, f, order=0)
    masks = {k: ndimage.zoom(v, f, order=0) for k, v in small.masks.items()}
    aff = np.diag([small.spacing[0] / f[0], small.spacing[1] / f[1], small.spacing[2] / f[2], 1.0])
    return CTCase(ct.astype(np.float32), aff, masks, {}, {'case_id': 'synthetic_full'})


def full_case(size):
    try:
        from abdomen_nb.phantom import make_case
        return make_case(0, size=size)
    except Exception as e:  # no phantom, or no such size
        print(f'phantom size={size!r} unavailable ({type(e).__name__}: {e}); using a synthetic 512x512x300 volume')
        return synthetic_full()


def one_run(case, organs):
    crit = C.AnatomyCritic()
    t0, c0 = time.perf_counter(), time.process_time()
    view = C.frontal_view(case, 'bone')
    verdicts = {}
    for o in organs:
        seen = CTCase(case.ct, case.affine, {k: v for k, v in case.masks.items() if k != o}, {}, case.meta)
        view.mask(case.masks[o])
        verdicts[o] = crit.check(seen, o, case.masks[o])
    return time.perf_counter() - t0, time.process_time() - c0, verdicts


def command_runs(size, runs, organs=('liver', 'spleen', 'kidney_left')):
    "Median wall / CPU seconds of the critic command on a one-case dataset written to a temporary folder."
    from abdomen_nb.phantom import make_cohort
    tmp = Path(tempfile.mkdtemp(prefix='bench_critic_'))
    try:
        make_cohort(1, tmp / 'data', seed=0, size=size, progress=False)
        c = AtlasDataset(tmp / 'data')[0]
        src = {'source_affine': c.meta['source_affine']}
        for name, fn in (('good', lambda o: c.mask(o)), ('shifted', lambda o: C.corrupt(c, o, 'shift', 0.8, seed=1))):
            write_case(CTCase(c.ct, c.affine, {o: fn(o) for o in organs}, {}, src), tmp / name / c.case_id,
                       write_ct=False, combined=False, masks_subdir='predictions')
        exe = Path(sys.executable).with_name('abdomen-nb')
        cmd = [str(exe), 'critic', str(tmp / 'data'), '--candidates', str(tmp / 'shifted'), str(tmp / 'good'),
               '--out', str(tmp / 'out'), '--overwrite', '--quiet', '--prefilter', 'off']
        wall, cpu = [], []
        for _ in range(runs):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        return c.shape, wall, cpu
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--runs', type=int, default=5); ap.add_argument('--size', default='full')
    ap.add_argument('--no-command', action='store_true', help='skip the command-line measurement')
    a = ap.parse_args()
    t0 = time.perf_counter(); case = full_case(a.size)
    print(f'{case} (made in {time.perf_counter() - t0:.1f} s, not timed)')
    organs = [o for o in C.BENCH_ORGANS if o in case.masks and case.masks[o].any()]
    times, cpu = [], []
    for i in range(a.runs):
        dt, dc, verdicts = one_run(case, organs)
        times.append(dt); cpu.append(dc)
    print(f'verdicts on the true masks: {verdicts}')
    print(f'projection + anatomy verdicts, {len(organs)} organs, {case.shape}: median {statistics.median(times):.2f} s wall, '
          f'{statistics.median(cpu):.2f} s CPU (wall min {min(times):.2f}, max {max(times):.2f}; {a.runs} runs; '
          f'target < 2 s on one core)')
    if not a.no_command:
        shape, wall, cpu = command_runs(a.size, a.runs)
        print(f'abdomen-nb critic, one {shape} case, 2 candidates x 3 organs, from files: median '
              f'{statistics.median(wall):.2f} s wall, {statistics.median(cpu):.2f} s CPU (wall min {min(wall):.2f}, '
              f'max {max(wall):.2f}; {a.runs} runs; includes Python start-up and imports)')


if __name__ == '__main__':
    main()
