"""Label Critic speed: frontal projection of a full-size case plus anatomy-critic verdicts for 8 organs.

Target: under 2 s per case on one core. Prints the median (and min/max) of several runs.
Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_critic.py [--runs 5] [--size full]
"""
import os
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
import argparse, statistics, time

import numpy as np

from abdomen_nb import critic as C
from abdomen_nb.core import CTCase


def synthetic_full(seed=0):
    "A 512 x 512 x 300 stand-in (0.8 x 0.8 x 1.5 mm) when the phantom's 'full' size is not available."
    small = C._synthetic_case(seed)
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


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--runs', type=int, default=5); ap.add_argument('--size', default='full')
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


if __name__ == '__main__':
    main()
