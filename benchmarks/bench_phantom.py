"""Speed and memory of the phantom generator.

    .venv/bin/python benchmarks/bench_phantom.py [--runs 3] [--cohort 20] [--hospital riverside]

Targets (issue 3): one 'full' case (512 x 512 x ~300) in <= 5 s and <= 4 GiB peak memory on one core;
a 20-case 'mini' cohort (generated and written) in < 20 s. Each run is a fresh child process pinned to
one CPU, so its peak RSS is its own; the script prints the median of the runs (wall and CPU seconds).
On a shared machine wall time includes waiting for the CPU: compare CPU seconds too.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, textwrap

CHILD = textwrap.dedent('''
    import json, os, resource, sys, tempfile, time
    try: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError): pass
    from abdomen_nb.phantom import make_case, make_cohort
    kind, arg = sys.argv[1], sys.argv[2]
    w, c = time.perf_counter(), time.process_time()
    if kind == 'full':
        case = make_case(1, hospital=arg, phase='portal venous', size='full', tumors='random')
        info = {'shape': list(case.shape), 'masks': len(case.masks)}
    else:
        with tempfile.TemporaryDirectory() as d:
            make_cohort(int(arg), d, seed=0, progress=False)
            info = {'cases': int(arg)}
    info.update(wall=time.perf_counter() - w, cpu=time.process_time() - c,
                peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    print(json.dumps(info))
''')


def run(kind:str, arg:str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', MKL_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', CHILD, kind, arg], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--cohort', type=int, default=20)
    ap.add_argument('--hospital', default='riverside', help='the full case uses this scanner (riverside: 512x512x300)')
    a = ap.parse_args(argv)
    for kind, arg, target in (('full', a.hospital, 'target <= 5 s, <= 4 GiB'),
                              ('cohort', str(a.cohort), f'target < 20 s for 20 cases')):
        rs = [run(kind, arg) for _ in range(a.runs)]
        med = {k: statistics.median(r[k] for r in rs) for k in ('wall', 'cpu', 'peak_gib')}
        extra = {k: v for k, v in rs[0].items() if k not in med}
        print(f"{kind:7s} {extra}: median wall {med['wall']:.2f} s, cpu {med['cpu']:.2f} s, "
              f"peak RSS {med['peak_gib']:.2f} GiB over {a.runs} runs ({target}); "
              f"walls {[round(r['wall'], 2) for r in rs]}")


if __name__ == '__main__':
    main()
