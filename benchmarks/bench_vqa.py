"""VQA chapter benchmarks (prints medians; not a timed test).

1. Question generation for one case from its measurements, all 42 subtypes: target <= 1 s.
2. `abdomen-nb vqa generate` on a mini phantom cohort from files (read + measure + generate + write, through the
   batch runner), default 100 cases: target <= 2 minutes on 2 cores with `--workers 2`. Each timed run writes
   into a fresh run folder, so no case is skipped; a rerun on a finished folder (every case skipped, questions
   rebuilt from the facts files) is timed too.

    .venv/bin/python benchmarks/bench_vqa.py [--n 100] [--workers 2] [--data DIR] [--repeats 20] [--runs 3]

The cohort is generated once into --data (default: a temporary folder) and is not part of the timing. The
command runs in a subprocess, as a user runs it: `abdomen-nb vqa generate` when the entry point routes `vqa` to
`abdomen_nb.vqa_answerers`, else the same function through `python -c`.
"""
from __future__ import annotations

import argparse, resource, shutil, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

from abdomen_nb import vqa


def bench_generation(repeats: int) -> dict:
    from abdomen_nb.phantom import make_case
    facts = {'hand-made record': vqa.example_facts()}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        case = make_case(82, phase='portal venous', tumors=[
            dict(organ='liver', type='metastasis', diameter_mm=50), dict(organ='liver', type='hcc', diameter_mm=16),
            dict(organ='pancreas', type='pdac', diameter_mm=30), dict(organ='kidney', type='cyst', diameter_mm=28)])
        facts['phantom case'] = vqa.case_facts(case)
    out = {}
    for name, f in facts.items():
        ts = []
        for i in range(repeats):
            t0 = time.perf_counter(); qs = vqa.generate_questions(f, seed=i); ts.append(time.perf_counter() - t0)
        out[name] = (statistics.median(ts), len(qs), len({q['question_subtype'] for q in qs}))
    return out


def command() -> list[str]:
    "The `abdomen-nb vqa` command line as a user runs it."
    from abdomen_nb import pipeline
    exe = Path(sys.executable).with_name('abdomen-nb')
    if pipeline.SUBCOMMANDS['vqa'][0] == 'vqa_answerers' and exe.exists(): return [str(exe), 'vqa']
    return [sys.executable, '-c', 'import sys; from abdomen_nb.vqa_answerers import main_vqa; sys.exit(main_vqa(sys.argv[1:]))']


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_generate(data: Path, out: Path, workers: int) -> tuple[float, float]:
    "(wall s, CPU s of the command and its workers) of one `vqa generate`."
    c0, t0 = children_cpu(), time.perf_counter()
    p = subprocess.run(command() + ['generate', str(data), '--out', str(out), '--workers', str(workers)],
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if p.returncode != 0: raise SystemExit(f'vqa generate failed ({p.returncode}):\n{p.stdout}\n{p.stderr}')
    return wall, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=100); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--data', default=None, help='cohort folder (made if missing; default: a temporary folder)')
    ap.add_argument('--repeats', type=int, default=20, help='repeats of the one-case generation timing')
    ap.add_argument('--runs', type=int, default=3, help='timed runs of the command')
    a = ap.parse_args(argv)
    for name, (med, nq, ns) in bench_generation(a.repeats).items():
        verdict = 'ok' if med <= 1.0 else 'SLOW'
        print(f"generate_questions, {name}: median {med * 1000:.1f} ms for {nq} questions / {ns} subtypes "
              f"(target <= 1 s: {verdict})")
    from abdomen_nb.phantom import make_cohort
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / 'cohort'
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            make_cohort(a.n, data, seed=0, progress=False)
        t_make = time.perf_counter() - t0
        walls, cpus = [], []
        for i in range(a.runs):
            run = Path(tmp) / f'run{i}'
            w, c = run_generate(data, run / 'questions.jsonl', a.workers); walls.append(w); cpus.append(c)
        rerun = run_generate(data, run / 'questions.jsonl', a.workers)[0]
        nq = len(vqa.read_jsonl(run / 'questions.jsonl'))
        for i in range(a.runs): shutil.rmtree(Path(tmp) / f'run{i}', ignore_errors=True)
    med, cpu = statistics.median(walls), statistics.median(cpus)
    verdict = 'ok' if med <= 120 else 'SLOW'
    print(f"abdomen-nb vqa generate, {a.n} mini cases from files (cohort made in {t_make:.0f} s, not timed), "
          f"--workers {a.workers}: median {med:.1f} s wall over {a.runs} runs ({', '.join(f'{w:.1f}' for w in walls)}), "
          f"{nq} questions (target <= 120 s: {verdict})")
    print(f"  CPU time (command + workers) median {cpu:.1f} s = {cpu / a.n:.2f} s per case; on {a.workers} otherwise idle "
          f"core(s) about {cpu / a.workers:.0f} s (a shared machine's wall time can be several times more)")
    print(f"  rerun on a finished run folder (every case skipped, questions rebuilt from the facts): {rerun:.1f} s")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
