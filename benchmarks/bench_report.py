"""Benchmark: `abdomen-nb report CASE --out DIR` end to end, from files, on a full-resolution case folder in
the AbdomenAtlas 3.0 layout (issue 14).

The case is a full-size phantom (512 x 512 x 300) written the way AbdomenAtlas 3.0 / RadGPT users have it
(tests/atlas3_layout.py): one file per structure, per-segment files instead of label maps, `celiac_aa` and
`veins`, and empty lesion files. What is timed is the command a user runs, as a subprocess: process start
to report written, median of several runs, with the child's peak RSS; with one thread (taskset to one
core, OMP_NUM_THREADS=1) and with two. `abdomen-nb info CASE` likewise. Then the floor: decompressing the
case's files with Python's zlib, isal, libdeflate (`deflate`) and nibabel, and the binary check of a mask.

Targets: report and info <= 5 s with one thread, <= 3 s with two, peak <= 1.5 GiB.
The published RadGPT code takes 175 s and 5.45 GiB on such a folder (issue 14).

    .venv/bin/python benchmarks/bench_report.py [--runs 5] [--dir /tmp/bench_atlas3] [--floor]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time, zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
CLI = str(Path(sys.executable).parent / 'abdomen-nb')
def build(root: Path) -> tuple[Path, Path]:
    "The full phantom written twice: the phantom's own layout and the AbdomenAtlas 3.0 layout (cached in `root`)."
    a3, ph = root / 'atlas3' / 'BDMAP_00000001', root / 'phantom' / 'BDMAP_00000001'
    if (a3 / 'segmentations' / 'veins.nii.gz').exists() and (ph / 'truth.json').exists(): return a3, ph
    from abdomen_nb.phantom import make_case
    from abdomen_nb.core import write_case, write_json
    from atlas3_layout import FULL_TUMORS, write_atlas3_case
    shutil.rmtree(root, ignore_errors=True)
    case = make_case(0, phase='portal venous', tumors=FULL_TUMORS, size='full')
    case.meta['case_id'] = 'BDMAP_00000001'
    write_case(case, ph); write_json(case.meta['truth'], ph / 'truth.json')
    write_atlas3_case(case, a3)
    return a3, ph


def run(cmd, cores: str, threads: int) -> tuple[float, float, str, float]:
    "Wall seconds, peak RSS (GiB) of the child, its stdout+stderr, and its CPU seconds (user + system)."
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'OPENBLAS_NUM_THREADS': str(threads),
           'MKL_NUM_THREADS': str(threads), 'PYTHONWARNINGS': 'default'}
    t0 = time.perf_counter()
    p = subprocess.Popen(['taskset', '-c', cores, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode: raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{out}")
    return wall, ru.ru_maxrss / 1024 ** 2, out, ru.ru_utime + ru.ru_stime


def timed(label, cmd, runs) -> dict:
    res = {}
    for cores, threads in (('0', 1), ('0,1', 2)):
        walls, peaks, cpus = [], [], []
        for _ in range(runs):
            w, pk, out, c = run(cmd, cores, threads); walls.append(w); peaks.append(pk); cpus.append(c)
        res[threads] = (statistics.median(walls), max(peaks), statistics.median(cpus))
        print(f"{label:<34} {threads} thread{'s' if threads > 1 else ' '}: median {statistics.median(walls):5.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}, {runs} runs), CPU {statistics.median(cpus):5.2f} s; "
              f"peak RSS {max(peaks):.2f} GiB")
    if 'Warning' in out or 'Traceback' in out: print('  output had warnings:\n' + out)
    return res


def floor(case_dir: Path):
    "Decompression floor of the case's files, and the binary check of one mask."
    import nibabel as nib
    files = [case_dir / 'ct.nii.gz'] + sorted((case_dir / 'segmentations').glob('*.nii.gz'))
    comp = [f.read_bytes() for f in files]
    raw = sum(len(zlib.decompress(c, 31)) for c in comp)
    print(f"floor on {len(files)} files ({raw / 1e9:.2f} GB decompressed, {sum(map(len, comp)) / 1e6:.0f} MB on disk):")
    readers = {'zlib': lambda c: zlib.decompress(c, 31)}
    try:
        from isal import isal_zlib; readers['isal'] = lambda c: isal_zlib.decompress(c, 31)
    except ImportError: pass
    try:
        import deflate; readers['deflate (libdeflate)'] = deflate.gzip_decompress
    except ImportError: pass
    for name, fn in readers.items():
        t0 = time.process_time(); [fn(c) for c in comp]; print(f"  {name:<22} {time.process_time() - t0:5.2f} s CPU")
    t0 = time.process_time(); [np.asarray(nib.load(str(f)).dataobj) for f in files]
    print(f"  {'nibabel':<22} {time.process_time() - t0:5.2f} s CPU")
    m = np.asarray(nib.load(str(case_dir / 'segmentations' / 'liver.nii.gz')).dataobj)
    t0 = time.perf_counter(); (m > 1).any(); t1 = time.perf_counter(); np.unique(m.T); t2 = time.perf_counter()
    print(f"  binary check of one mask: (m > 1).any() {1000 * (t1 - t0):.0f} ms, np.unique on the RAS view {1000 * (t2 - t1):.0f} ms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--dir', default=str(Path(tempfile.gettempdir()) / 'bench_atlas3'))
    ap.add_argument('--floor', action='store_true', help='also time the decompression floor')
    ap.add_argument('--build-only', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.build_only: build(Path(a.dir)); return 0
    # built in a child process: Linux carries a parent's peak RSS over fork + exec into the children timed below
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, '--build-only', '--dir', a.dir], check=True)
    a3, ph = build(Path(a.dir))
    n = len(list((a3 / 'segmentations').glob('*.nii.gz')))
    print(f"case folder {a3} ({n} masks + ct.nii.gz, AbdomenAtlas 3.0 layout) ready in {time.perf_counter() - t0:.1f} s; "
          f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    out = Path(a.dir) / 'report_out'
    rep = timed('abdomen-nb report CASE --out DIR', [CLI, 'report', str(a3), '--out', str(out), '--overwrite'], a.runs)
    info = timed('abdomen-nb info CASE', [CLI, 'info', str(a3)], a.runs)
    # the same case in the phantom's own layout gives the same report
    out_ph = Path(a.dir) / 'report_phantom'
    run([CLI, 'report', str(ph), '--out', str(out_ph), '--overwrite'], '0,1', 2)  # noqa
    same = (out / 'report.txt').read_text() == (out_ph / 'report.txt').read_text()
    print(f"report.txt identical to the phantom layout's: {same}")
    m = json.loads((out / 'report.json').read_text())['measurements']
    truth = json.loads((a3 / 'truth.json').read_text())
    print(f"{len(m['lesions'])} lesions reported, {len(truth['lesions'])} in truth")
    for l in m['lesions']:
        if l.get('vessel_contact_deg'):
            print(f"  {l['id']} {l['type']}: {l['longest_diameter_mm']} mm, {l.get('t_stage')}, {l.get('resectability')}, "
                  f"contacts {l['vessel_contact_deg']}")
    for t in truth['lesions']:
        if any(t['vessel_contact_deg'].values()): print(f"  truth {t['type']}: {t['vessel_contact_deg']}")
    if a.floor: floor(a3)
    ok = all(rep[1][0] <= 5 and rep[2][0] <= 3 and rep[k][1] <= 1.5 and info[1][0] <= 5 and info[2][0] <= 3
             and info[k][1] <= 1.5 for k in (1, 2))
    print('PASS' if ok and same else 'FAIL', '(targets: <= 5 s with one thread, <= 3 s with two, <= 1.5 GiB; same report)')
    return 0 if ok and same else 1


if __name__ == '__main__':
    sys.exit(main())
