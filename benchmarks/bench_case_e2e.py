"""Benchmark: one full-resolution case end to end - report + VQA generation + Label Critic - from files (issue 15).

The case is a full-size phantom (512 x 512 x ~300, AbdomenAtlas layout with its per-segment files and empty
lesion files, written once and not timed). Three commands run one after the other, as a user would run them:

    abdomen-nb report DATA/BDMAP_00000001 --out RUN/report --overwrite
    abdomen-nb vqa generate DATA --out RUN/vqa/questions.jsonl --overwrite
    abdomen-nb critic DATA --candidates SHIFTED GOOD --out RUN/critic --overwrite --prefilter off

(the critic judges every organ of two candidate folders: the true labels and a copy with each organ shifted).
Each command runs under `/usr/bin/time -v`; the script prints, per command, the median wall time, CPU time and
the peak resident memory (maximum over --runs), and the peak of the whole chain (the largest of the three,
as they run one after another). Target: the chain within 6 GiB.

    .venv/bin/python benchmarks/bench_case_e2e.py [--runs 3] [--data DIR] [--workers 1]
"""
from __future__ import annotations

import argparse, re, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CLI = str(Path(sys.executable).parent / 'abdomen-nb')
ORGANS = ('liver', 'spleen', 'kidney_left', 'kidney_right', 'pancreas', 'stomach', 'gall_bladder', 'aorta', 'postcava')


def make_data(data: Path) -> tuple[Path, Path, Path]:
    "One full case, plus the two candidate label folders the critic chooses between (reused when present)."
    import numpy as np
    from abdomen_nb.core import AtlasDataset, CTCase, write_case
    from abdomen_nb.phantom import make_cohort
    from abdomen_nb import critic_images as C
    t0 = time.perf_counter()
    make_cohort(1, data / 'data', seed=0, size='full', progress=False)
    good, shifted = data / 'good', data / 'shifted'
    c = AtlasDataset(data / 'data')[0]
    if not (shifted / c.case_id).exists():
        organs = [o for o in ORGANS if o in c.masks]
        src = {'source_affine': c.meta['source_affine']}
        for folder, fn in ((good, lambda o: c.mask(o)), (shifted, lambda o: C.corrupt(c, o, 'shift', 0.8, seed=1))):
            write_case(CTCase(c.ct, c.affine, {o: np.asarray(fn(o)) for o in organs}, {}, src), folder / c.case_id,
                       write_ct=False, combined=False, masks_subdir='predictions')
    print(f'data: case {c.case_id} {c.shape} at {tuple(round(s, 2) for s in c.spacing)} mm, '
          f'{len(c.masks)} masks ({time.perf_counter() - t0:.0f} s to make or check)')
    return data / 'data', good, shifted


def timed(cmd: list) -> dict:
    "Wall, CPU and peak RSS of one command (with its children) from /usr/bin/time -v."
    t0 = time.perf_counter()
    p = subprocess.run(['/usr/bin/time', '-v'] + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode: raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    grab = lambda key: float(re.search(rf'{key}: ([\d.]+)', p.stderr).group(1))
    return {'wall_s': wall, 'cpu_s': grab(r'User time \(seconds\)') + grab(r'System time \(seconds\)'),
            'peak_gib': grab(r'Maximum resident set size \(kbytes\)') / 2 ** 20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--data', default=None, help='folder for the case (kept; default: a temporary folder)')
    ap.add_argument('--workers', default='1')
    a = ap.parse_args()
    root = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix='bench_e2e_'))
    try:
        data, good, shifted = make_data(root)
        case_dir = sorted(p for p in data.iterdir() if p.name.startswith('BDMAP_'))[0]
        cmds = {
            'report': [CLI, 'report', str(case_dir), '--out', str(root / 'run' / 'report'), '--overwrite'],
            'vqa generate': [CLI, 'vqa', 'generate', str(data), '--out', str(root / 'run' / 'vqa' / 'questions.jsonl'),
                             '--overwrite', '--workers', a.workers],
            'critic': [CLI, 'critic', str(data), '--candidates', str(shifted), str(good), '--out',
                       str(root / 'run' / 'critic'), '--overwrite', '--quiet', '--prefilter', 'off', '--workers', a.workers],
        }
        rows = {k: [timed(c) for _ in range(a.runs)] for k, c in cmds.items()}
        print(f'\none full case end to end, from files, {a.runs} runs each (median wall / CPU, max peak):')
        for k, rs in rows.items():
            print(f"  {k:<13} {statistics.median(r['wall_s'] for r in rs):6.2f} s wall  "
                  f"{statistics.median(r['cpu_s'] for r in rs):6.2f} s CPU  peak {max(r['peak_gib'] for r in rs):.2f} GiB")
        chain = sum(statistics.median(r['wall_s'] for r in rs) for rs in rows.values())
        peak = max(r['peak_gib'] for rs in rows.values() for r in rs)
        print(f'  chain         {chain:6.2f} s wall, peak {peak:.2f} GiB (target: within 6 GiB) -> '
              f"{'OK' if peak <= 6 else 'OVER'}")
    finally:
        if not a.data: shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
