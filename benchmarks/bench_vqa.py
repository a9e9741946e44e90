"""VQA chapter benchmarks (prints medians; not a timed test).

1. Question generation for one case from its measurements, all 42 subtypes: target <= 1 s.
2. A mini phantom cohort end to end (read + measure + generate), default 100 cases: target <= 2 minutes on
   2 cores (`--workers 2` measures two cases at a time).

    .venv/bin/python benchmarks/bench_vqa.py [--n 100] [--workers 2] [--data DIR] [--repeats 20]

The cohort is generated once into --data (default: a temporary folder) and is not part of the timing.
"""
from __future__ import annotations

import argparse, resource, statistics, tempfile, time, warnings
from pathlib import Path

from abdomen_nb import vqa
from abdomen_nb.core import AtlasDataset


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


def bench_cohort(n: int, data: Path, workers: int) -> dict:
    from abdomen_nb.phantom import make_cohort
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        make_cohort(n, data, seed=0, progress=False)
    t_make = time.perf_counter() - t0
    ds = AtlasDataset(data)
    if n < len(ds.ids): ds.ids = ds.ids[:n]
    per_case = []
    def cpu():
        return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                   for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    c0 = cpu()
    t0 = time.perf_counter()
    if workers > 1:
        recs = vqa.generate_dataset(ds, seed=0, workers=workers, progress=False)
    else:
        recs = []
        letters = vqa.LetterCycle(0)
        for cid in ds.ids:
            t1 = time.perf_counter()
            recs += vqa.generate_questions(vqa.case_facts(ds[cid]), seed=0, letters=letters)
            per_case.append(time.perf_counter() - t1)
    total, cpu_s = time.perf_counter() - t0, cpu() - c0
    return dict(n=len(ds), make_s=t_make, total_s=total, cpu_s=cpu_s,
                per_case_s=statistics.median(per_case) if per_case else total / len(ds), questions=len(recs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=100); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--data', default=None, help='cohort folder (made if missing; default: a temporary folder)')
    ap.add_argument('--repeats', type=int, default=20)
    a = ap.parse_args(argv)
    for name, (med, nq, ns) in bench_generation(a.repeats).items():
        verdict = 'ok' if med <= 1.0 else 'SLOW'
        print(f"generate_questions, {name}: median {med * 1000:.1f} ms for {nq} questions / {ns} subtypes "
              f"(target <= 1 s: {verdict})")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / 'cohort'
        r = bench_cohort(a.n, data, a.workers)
    verdict = 'ok' if r['total_s'] <= 120 else 'SLOW'
    print(f"cohort of {r['n']} mini cases (made in {r['make_s']:.0f} s, not timed): read + measure + generate "
          f"{r['total_s']:.1f} s wall with {a.workers} worker(s), median {r['per_case_s']:.2f} s per case, "
          f"{r['questions']} questions (target <= 120 s: {verdict})")
    print(f"  CPU time {r['cpu_s']:.1f} s = {r['cpu_s'] / r['n']:.2f} s per case; on {a.workers} otherwise idle core(s) "
          f"about {r['cpu_s'] / a.workers:.0f} s (a shared machine's wall time can be several times more)")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
