"""The batch runner on a real dask.distributed LocalCluster of 2 worker processes: a failing case, a worker
killed mid-case, resume after the client is interrupted, and byte-identical outputs for 1 and 2 workers.

The case functions are small fake jobs (module-level, so the workers can import them) writing small files."""
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from abdomen_nb.batch import (DuplicateCaseIdError, UnwritableOutputError, add_batch_args, batch_options,
                              read_manifest, run_batch)
from abdomen_nb.core import save_nifti, write_json

IDS = [f'BDMAP_{i:08d}' for i in range(1, 7)]
ROOT = Path(__file__).resolve().parents[1]


def job(cid, out, fail=(), kill=(), kill_always=(), sleep=0.0):
    "Write a seeded random volume and a JSON per case; fail, or kill the worker, for the named cases."
    out = Path(out)
    if cid in fail: raise ValueError(f'{out / cid}/ct.nii.gz is truncated; re-export it')
    flag = out / f'.{cid}.attempts'
    n = int(flag.read_text()) if flag.exists() else 0
    flag.write_text(str(n + 1))
    if cid in kill_always or (cid in kill and n == 0):
        time.sleep(0.5)                               # mid-case, as an out-of-memory kill would be
        os.kill(os.getpid(), signal.SIGKILL)          # the worker process dies mid-case
    if sleep: time.sleep(sleep)
    rng = np.random.default_rng(int(cid.split('_')[1]))
    vol = rng.normal(40, 20, (16, 16, 8)).astype(np.float32)
    a = save_nifti(vol, np.diag([0.8, 0.8, 2.5, 1]), out / cid / 'ct.nii.gz', overwrite=True)
    b = write_json({'case_id': cid, 'mean': float(vol.mean())}, out / cid / 'stats.json', overwrite=True)
    return {'ct': a, 'stats': b}


def attempts(out, cid): return int((Path(out) / f'.{cid}.attempts').read_text())


def test_one_failing_case_fails_alone_on_two_workers(tmp_path):
    m = run_batch(IDS, functools.partial(job, out=tmp_path, fail={IDS[2]}), tmp_path, workers=2, progress=False)
    assert list(m.case_id) == IDS
    assert list(m.status) == ['done', 'done', 'failed', 'done', 'done', 'done']
    bad = m.iloc[2]
    assert bad.error.startswith('ValueError: ') and f'{IDS[2]}/ct.nii.gz is truncated' in bad.error
    assert 'Traceback' in bad.traceback and 'job' in bad.traceback
    assert (m.peak_mb[m.status == 'done'] > 10).all()
    on_disk = read_manifest(tmp_path)
    assert list(on_disk.status) == list(m.status)
    assert on_disk.outputs[0] == [str(tmp_path / IDS[0] / 'ct.nii.gz'), str(tmp_path / IDS[0] / 'stats.json')]
    assert not (tmp_path / IDS[2]).exists()


def test_a_killed_worker_has_its_case_retried_then_failed(tmp_path):
    fn = functools.partial(job, out=tmp_path, kill={IDS[1]}, kill_always={IDS[4]})
    m = run_batch(IDS, fn, tmp_path, workers=2, retries=1, progress=False)
    status = dict(zip(m.case_id, m.status))
    assert status == {**{c: 'done' for c in IDS}, IDS[4]: 'failed'}
    assert attempts(tmp_path, IDS[1]) == 2              # killed once, retried, finished
    assert attempts(tmp_path, IDS[4]) == 2              # killed, retried once, given up
    assert 'KilledWorker' in m.set_index('case_id').loc[IDS[4], 'error']
    for c in IDS:                                       # one attempt each for the cases that were never killed
        if c not in (IDS[1], IDS[4]): assert attempts(tmp_path, c) == 1
    assert len(read_manifest(tmp_path)) == len(IDS)     # the manifest is complete
    assert (tmp_path / IDS[1] / 'stats.json').exists() and not (tmp_path / IDS[4]).exists()


def test_outputs_are_byte_identical_for_one_and_two_workers(tmp_path):
    a, b = tmp_path / 'one', tmp_path / 'two'
    run_batch(IDS, functools.partial(job, out=a), a, workers=1, progress=False)
    run_batch(IDS, functools.partial(job, out=b), b, workers=2, progress=False)
    for c in IDS:
        assert (a / c / 'ct.nii.gz').read_bytes() == (b / c / 'ct.nii.gz').read_bytes()
        assert (a / c / 'stats.json').read_bytes() == (b / c / 'stats.json').read_bytes()


CLIENT = textwrap.dedent('''
    import functools, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)   # a job started in the background inherits SIGINT ignored
    sys.path.insert(0, {tests!r})
    from test_batch import job, IDS
    from abdomen_nb.batch import run_batch
    run_batch(IDS, functools.partial(job, out={out!r}, sleep=1.0), {out!r}, workers=2, progress=False)
''')


def test_resume_after_the_client_is_interrupted(tmp_path):
    out = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, '-c', CLIENT.format(tests=str(ROOT / 'tests'), out=str(out))],
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while time.time() - t0 < 120:                   # wait until two cases are recorded as done
            if len(read_manifest(out)) >= 2: break
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)                    # Ctrl-C: the client stops mid-run
        p.wait(timeout=60)
    finally:
        try: os.killpg(p.pid, signal.SIGKILL)          # whatever of that run is left (its own session)
        except ProcessLookupError: pass
    first = read_manifest(out)
    assert 2 <= len(first) < len(IDS), first
    finished = list(first.case_id[first.status == 'done'])
    stamps = {c: (out / c / 'ct.nii.gz').stat().st_mtime_ns for c in finished}
    m = run_batch(IDS, functools.partial(job, out=out), out, workers=2, progress=False)
    status = dict(zip(m.case_id, m.status))
    assert all(status[c] == 'skipped' for c in finished)
    assert all(status[c] == 'done' for c in IDS if c not in finished)
    assert {c: (out / c / 'ct.nii.gz').stat().st_mtime_ns for c in finished} == stamps   # untouched
    assert all(attempts(out, c) == 1 for c in finished)
    assert list(read_manifest(out).status) == list(m.status)


def test_resume_uses_done_and_retries_failed_cases(tmp_path):
    run_batch(IDS, functools.partial(job, out=tmp_path, fail={IDS[0]}), tmp_path, progress=False)
    (tmp_path / IDS[3] / 'stats.json').unlink()          # an incomplete case: outputs no longer all there
    def done(c): return (tmp_path / c / 'ct.nii.gz').exists() and (tmp_path / c / 'stats.json').exists()
    m = run_batch(IDS, functools.partial(job, out=tmp_path), tmp_path, done=done, progress=False)
    assert list(m.status) == ['done', 'skipped', 'skipped', 'done', 'skipped', 'skipped']
    m = run_batch(IDS, functools.partial(job, out=tmp_path), tmp_path, progress=False)  # manifest-based
    assert set(m.status) == {'skipped'}
    m = run_batch(IDS, functools.partial(job, out=tmp_path), tmp_path, overwrite=True, progress=False)
    assert set(m.status) == {'done'}


def test_an_interrupted_in_process_run_leaves_a_valid_manifest(tmp_path):
    def fn(c):
        if c == IDS[3]: raise KeyboardInterrupt
        return job(c, tmp_path)
    with pytest.raises(KeyboardInterrupt): run_batch(IDS, fn, tmp_path, progress=False)
    assert list(read_manifest(tmp_path).case_id) == IDS[:3]


def test_bad_batch_input_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(DuplicateCaseIdError, match=r"\['BDMAP_00000001'\] more than once"):
        run_batch([IDS[0], IDS[1], IDS[0]], functools.partial(job, out=tmp_path), tmp_path, progress=False)
    (tmp_path / 'a_file').write_text('not a folder')
    with pytest.raises(UnwritableOutputError, match='a_file'):
        run_batch(IDS, functools.partial(job, out=tmp_path), tmp_path / 'a_file' / 'run', progress=False)
    with pytest.raises(ValueError, match='workers=0'):
        run_batch(IDS, print, tmp_path, workers=0)
    with pytest.raises(ValueError, match="'lots'"):
        run_batch(IDS, print, tmp_path, workers=2, memory_limit='lots')


def test_batch_flags():
    import argparse
    ap = add_batch_args(argparse.ArgumentParser())
    assert batch_options(ap.parse_args([])) == {'workers': 1, 'scheduler': None, 'memory_limit': None,
                                                'overwrite': False}
    assert batch_options(ap.parse_args(['--workers', '2', '--scheduler', 'tcp://h:8786', '--overwrite'])) == \
        {'workers': 2, 'scheduler': 'tcp://h:8786', 'memory_limit': None, 'overwrite': True}
