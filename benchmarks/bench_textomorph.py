"""Benchmark: one TextoMorph tumor (tiny preset) painted into a full-resolution case (issue 16, chapter 41).

The case is the healthy full-size phantom of `bench_synth.py` (512 x 512 x 300 AbdomenAtlas folder, built
once). Timed, each in a fresh child process that reads the case from its folder:

* `textomorph.synthesize(case, text, seed)` on the case in memory (the text is parsed, the geometry drawn,
  the patch inpainted by `ddim_steps` DDIM steps of the default model, the result blended): median of
  `--runs` seeds, wall and CPU seconds, and the peak memory beyond the case;
* the command a user runs, `abdomen-nb synth insert CASE --text ... --out DIR --method textomorph`
  (read + paint + write the new case folder), median wall time of `--runs` runs.

The default model is `textomorph.pretrained()` (trained once and cached: the first run of this script
may spend a few minutes training it; that is not timed). Target: one tumor <= 5 s on 2 cores.

    .venv/bin/python benchmarks/bench_textomorph.py [--runs 5] [--dir /tmp/bench_synth] [--threads 2]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_synth import build, time_cli   # the same full-resolution case folder

TEXT = 'a 3 cm heterogeneous hyperattenuating mass in hepatic segment 7'

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter('ignore')
import torch
def vm(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024 ** 2   # GiB
from abdomen_nb.core import read_case
from abdomen_nb import textomorph as tm
case_dir, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model = tm.pretrained()
case = read_case(case_dir)
base = vm('VmRSS')
tm.synthesize(case, TEXT, seed=1000, model=model)          # warm-up (the sentence encoder loads)
base = max(base, vm('VmRSS'))
walls, cpus, diam = [], [], []
for s in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = tm.synthesize(case, TEXT, seed=s, model=model)
    walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
    diam.append(out.meta['truth']['lesions'][-1]['longest_diameter_mm'])
    del out
print(json.dumps(dict(walls=walls, cpus=cpus, diam=diam, beyond=vm('VmHWM') - base, case_gib=base)))
'''.replace('TEXT', repr(TEXT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--dir', default=str(Path(tempfile.gettempdir()) / 'bench_synth'))
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--no-cli', action='store_true', help='skip timing the command')
    a = ap.parse_args(argv)
    from abdomen_nb import textomorph as tm
    tm.pretrained()                                            # train + cache once, outside the timings
    case_dir = build(Path(a.dir), None)
    print(f"case folder {case_dir}; machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads {a.threads}")
    r = subprocess.run([sys.executable, '-c', CHILD, str(case_dir), str(a.runs), str(a.threads)], capture_output=True, text=True)
    if r.returncode: raise SystemExit(f'synthesize failed:\n{r.stderr}')
    res = json.loads(r.stdout.strip().splitlines()[-1])
    med, cpu = statistics.median(res['walls']), statistics.median(res['cpus'])
    ok = med <= 5.0
    print(f"textomorph.synthesize, {TEXT!r}: median {med:.2f} s wall, {cpu:.2f} s CPU ({a.runs} seeds; min "
          f"{min(res['walls']):.2f}, max {max(res['walls']):.2f}); peak {res['beyond']:.2f} GiB beyond the case "
          f"({res['case_gib']:.2f} GiB with it); diameters {', '.join(f'{d:.0f}' for d in res['diam'])} mm")
    if not a.no_cli:
        walls = time_cli(['synth', 'insert', str(case_dir), '--text', TEXT, '--out', str(Path(a.dir) / 'out_textomorph'),
                          '--method', 'textomorph', '--overwrite'], a.runs, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
        print(f"{'synth insert CASE --method textomorph (read + paint + write)':<62} median {statistics.median(walls):.2f} s "
              f"wall ({a.runs} runs; min {min(walls):.2f}, max {max(walls):.2f})")
    print('PASS' if ok else 'FAIL', '(target: one TextoMorph tumor <= 5 s median on 2 cores)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
