"""Benchmark: one Text2CT volume from a text (tiny preset, issue 18, chapter 42).

Timed, in a fresh child process each:

* `text2ct.generate(text, model, seed)` in memory: median of `--runs` seeds, wall and CPU seconds, and the
  peak memory beyond the loaded model; the same with a label map (a mini phantom's masks on the grid);
* the command a user runs, `abdomen-nb text2ct generate TEXT --model MODEL --out DIR` (load the model and
  the text encoder, sample, decode, write ct.nii.gz + meta.json): median wall time of `--runs` runs;
* with `--labels-case CASE_DIR` also the command with `--labels CASE_DIR` (e.g. the 512 x 512 x 300 folder
  of `bench_synth.py`: its masks are read and brought to the grid).

The model is `text2ct.pretrained()` (trained once and cached: the first run spends about a minute training
it; that is not timed). Target: one volume <= 10 s on 2 cores.

    .venv/bin/python benchmarks/bench_text2ct.py [--runs 5] [--threads 2] [--labels-case /tmp/bench_synth/BDMAP_...]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_synth import time_cli   # abdomen-nb ARGS --seed S, timed

TEXT = 'Abdominal CT in the portal venous phase of a 60-year-old woman. There is a 4.0 cm hypoattenuating metastasis in the liver.'

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter('ignore')
import torch
def vm(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024 ** 2   # GiB
from abdomen_nb import text2ct as T
from abdomen_nb.phantom import make_case
runs, threads, TEXT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
model = T.pretrained()
lab = T.to_grid(make_case(3, size='mini'), model.cfg)[1]
T.generate(TEXT, model, seed=1000)                           # warm-up (the sentence encoder loads)
base = vm('VmRSS')
res = {}
for name, labels in [('text', None), ('text + label map', lab)]:
    walls, cpus = [], []
    for s in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        T.generate(TEXT, model, seed=s, labels=labels)
        walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
    res[name] = dict(walls=walls, cpus=cpus)
print(json.dumps(dict(res=res, beyond=vm('VmHWM') - base)))
'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--labels-case', help='a case folder whose masks condition the CLI run too')
    a = ap.parse_args(argv)
    from abdomen_nb import text2ct as T
    T.pretrained()                                              # train + cache once, outside the timings
    model = str(T.pretrained_path())
    print(f"model {model}; machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads {a.threads}")
    r = subprocess.run([sys.executable, '-c', CHILD, str(a.runs), str(a.threads), TEXT], capture_output=True, text=True)
    if r.returncode: raise SystemExit(f'generate failed:\n{r.stderr}')
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name, v in out['res'].items():
        print(f"text2ct.generate ({name}): median {statistics.median(v['walls']):.2f} s wall, {statistics.median(v['cpus']):.2f} s CPU "
              f"({a.runs} seeds; min {min(v['walls']):.2f}, max {max(v['walls']):.2f})")
    print(f"peak memory beyond the loaded model: {out['beyond']:.2f} GiB")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    d = Path(tempfile.mkdtemp())
    walls = time_cli(['text2ct', 'generate', TEXT, '--model', model, '--out', str(d / 'gen'), '--overwrite'], a.runs, env)
    print(f"{'text2ct generate TEXT --model MODEL --out DIR':<58} median {statistics.median(walls):.2f} s wall "
          f"({a.runs} runs; min {min(walls):.2f}, max {max(walls):.2f})")
    if a.labels_case:
        walls = time_cli(['text2ct', 'generate', TEXT, '--model', model, '--out', str(d / 'gen_l'), '--labels', a.labels_case, '--overwrite'], a.runs, env)
        print(f"{'  ... --labels ' + Path(a.labels_case).name:<58} median {statistics.median(walls):.2f} s wall "
              f"({a.runs} runs; min {min(walls):.2f}, max {max(walls):.2f})")
    med = statistics.median(out['res']['text']['walls'])
    ok = med <= 10.0
    print('PASS' if ok else 'FAIL', '(target: one tiny Text2CT volume <= 10 s median on 2 cores)')
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
