"""Benchmark: procedural insertion of one tumor into a full-resolution case (issue 16, chapter 40).

The case is a healthy full-size phantom (512 x 512 x 300, 0.70 x 0.70 x 1.0 mm; `--spacing 0.8` makes it
0.8 mm isotropic) written as an AbdomenAtlas case folder. Two things are timed, each in a fresh child
process that reads the case from its folder:

* the insertion itself, `synthesize(case, spec_or_text, seed)` on the case in memory: one tumor of each
  size class (small, medium, large; count 1) and a text ("a 3 cm ... in hepatic segment 7"), median of
  `--runs` seeds, with the peak memory beyond the case (VmHWM after the runs minus VmRSS once the case is
  read);
* the command a user runs, `abdomen-nb synth insert CASE --text ... --out DIR` (read + insert + write the
  new case folder), median wall time of `--runs` runs (for information: reading and writing ~30 gzipped
  NIfTI files dominates).

Targets: one tumor <= 0.5 s median, < 1.5 GiB beyond the case.

    .venv/bin/python benchmarks/bench_synth.py [--runs 5] [--dir /tmp/bench_synth] [--spacing 0.8]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / 'abdomen-nb')
TEXT = 'a 3 cm ill-defined hypoattenuating mass in hepatic segment 7'

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter('ignore')
def vm(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024 ** 2   # GiB
from abdomen_nb.core import read_case
from abdomen_nb.synth import TumorSpec, synthesize
case_dir, what, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
case = read_case(case_dir)
base = vm('VmRSS')
spec = TEXT if what == 'text' else TumorSpec(organ='liver', size_type=what, count=1)
synthesize(case, spec, seed=1000)          # warm-up (imports, the encoder for text)
base = max(base, vm('VmRSS'))
walls, cpus, diam = [], [], []
for s in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = synthesize(case, spec, seed=s)
    walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
    diam.append(out.meta['truth']['lesions'][-1]['longest_diameter_mm'])
    del out
print(json.dumps(dict(walls=walls, cpus=cpus, diam=diam, beyond=vm('VmHWM') - base, case_gib=base)))
'''.replace('TEXT', repr(TEXT))


def build(root: Path, spacing) -> Path:
    d = root / 'BDMAP_00000001'
    if (d / 'ct.nii.gz').exists(): return d
    from abdomen_nb.phantom import make_case
    from abdomen_nb.core import write_case
    shutil.rmtree(root, ignore_errors=True)
    case = make_case(5, hospital='riverside', size='full' if spacing is None else spacing, tumors='none',
                     case_id='BDMAP_00000001')
    write_case(case, d)
    return d


def time_cli(args:list, runs:int, env:dict|None=None) -> list:
    "Wall seconds of `runs` runs of `abdomen-nb ARGS --seed S` (S = 0..runs-1); stops on the first failure."
    walls = []
    for s in range(runs):
        t = time.perf_counter()
        r = subprocess.run([CLI, *args, '--seed', str(s)], capture_output=True, text=True, env=env)
        if r.returncode: raise SystemExit(f"abdomen-nb {' '.join(args[:2])} failed:\n{r.stderr}")
        walls.append(time.perf_counter() - t)
    return walls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--dir', default=str(Path(tempfile.gettempdir()) / 'bench_synth'))
    ap.add_argument('--spacing', type=float, default=None, help='isotropic voxel size (mm) instead of the scanner grid')
    ap.add_argument('--no-cli', action='store_true', help='skip timing the command')
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    case_dir = build(Path(a.dir), a.spacing)
    print(f"case folder {case_dir} ready in {time.perf_counter() - t0:.1f} s; machine load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (timings under load are noisy: CPU seconds are printed too)")
    ok = True
    for what in ('small', 'medium', 'large', 'text'):
        r = subprocess.run([sys.executable, '-c', CHILD, str(case_dir), what, str(a.runs)], capture_output=True, text=True)
        if r.returncode: raise SystemExit(f'{what} failed:\n{r.stderr}')
        res = json.loads(r.stdout.strip().splitlines()[-1])
        med, cpu = statistics.median(res['walls']), statistics.median(res['cpus'])
        ok &= med <= 0.5 and res['beyond'] < 1.5
        label = f"text {TEXT!r}" if what == 'text' else f'one {what} tumor'
        print(f"{label:<70} median {med:.3f} s wall, {cpu:.3f} s CPU ({a.runs} seeds; min {min(res['walls']):.3f}, "
              f"max {max(res['walls']):.3f}); peak {res['beyond']:.2f} GiB beyond the case ({res['case_gib']:.2f} GiB "
              f"with it); diameters {', '.join(f'{d:.0f}' for d in res['diam'])} mm")
    if not a.no_cli:
        walls = time_cli(['synth', 'insert', str(case_dir), '--text', TEXT, '--out', str(Path(a.dir) / 'out'), '--overwrite'],
                         a.runs)
        print(f"{'synth insert CASE --text ... --out DIR (read + insert + write)':<70} median {statistics.median(walls):.2f} s "
              f"wall ({a.runs} runs; min {min(walls):.2f}, max {max(walls):.2f})")
    print('PASS' if ok else 'FAIL', '(targets: one tumor <= 0.5 s median, < 1.5 GiB beyond the case)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
