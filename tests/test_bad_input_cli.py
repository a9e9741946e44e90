"""The bad-input corpus (tests/bad_input_corpus.py) through the command line, as a user meets it.

Each broken case runs through `abdomen-nb info` on its own and, all together with two good cases, through
one `report --dataset` batch: a clear message naming the offending file, a non-zero exit, the other cases
finished, and nothing overwritten (inputs byte-identical; finished outputs untouched by a re-run). DICOM
kinds run through `info` and `convert`; dataset-level kinds (empty dataset, unwritable output, a symlink out
of the dataset, an unreadable file) through `report --dataset`. The outcomes are written to
tests/_out/bad_input_table.md (the table in chapter 90)."""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_corpus import CASE_KINDS, make_bad_case, tree_digest  # noqa: E402

EXE = Path(sys.executable).with_name('abdomen-nb')
OUT = Path(__file__).parent / '_out'
KNOWN_FAILURES: dict[str, str] = {}  # kind -> why the command does not yet do what the issue asks (none now)
ROWS: list[dict] = []   # kind, command, outcome, message (for the chapter's table)
NO_DAC = ['setpriv', '--inh-caps=-dac_override,-dac_read_search', '--bounding-set=-dac_override,-dac_read_search']


def cli(*args, prefix=()):
    return subprocess.run([*prefix, str(EXE), *map(str, args)], capture_output=True, text=True, timeout=600)


def record(kind, command, r, note=''):
    msg = (r.stderr.strip().splitlines() or [''])[-1] if r.returncode else note
    ROWS.append({'kind': kind, 'command': command, 'exit': r.returncode, 'message': msg[:220]})


@pytest.fixture(scope='module', autouse=True)
def write_table():
    yield
    if ROWS:
        OUT.mkdir(exist_ok=True)
        import re
        df = pd.DataFrame(ROWS).drop_duplicates(['kind', 'command'], keep='last')
        what = {k.name: k.what for k in CASE_KINDS}
        lines = ['| kind | command | exit | outcome |', '| --- | --- | --- | --- |']
        for r in df.itertuples():
            m = re.sub(r'/tmp/\S*?/(?=BDMAP_|two_series|missing_slice|a_file)', '.../', r.message)
            m = m.replace('|', '/').replace('abdomen-nb ' + r.command.split()[0] + ': ', '')
            lines.append(f"| {r.kind}{' (' + what[r.kind] + ')' if r.kind in what else ''} | `{r.command}` | {r.exit} | {m[:160]} |")
        (OUT / 'bad_input_table.md').write_text('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "Two good phantom cases (AbdomenAtlas layout)."
    from abdomen_nb.phantom import make_cohort
    root = tmp_path_factory.mktemp('good')
    make_cohort(2, root / 'data', seed=0, progress=False)
    return root / 'data'


@pytest.fixture(scope='module')
def corpus(good, tmp_path_factory):
    "A dataset: the two good cases plus one broken case per kind; {kind name: (case folder, offending file)}."
    data = tmp_path_factory.mktemp('corpus') / 'data'
    shutil.copytree(good, data)
    made = {k.name: make_bad_case(good / 'BDMAP_00000001', data, i, k) for i, k in enumerate(CASE_KINDS)}
    return data, made




@pytest.mark.parametrize('kind', [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[k.name]))
                                  if k.name in KNOWN_FAILURES else k for k in CASE_KINDS], ids=lambda k: k.name)
def test_info_on_each_broken_case(corpus, kind):
    data, made = corpus
    case, bad = made[kind.name]
    before = tree_digest(case)
    r = cli('info', case, '--json')
    record(kind.name, 'info', r, note='read' + (f': {r.stderr.strip().splitlines()[-1][:160]}' if r.stderr.strip() else ''))
    assert tree_digest(case) == before                      # nothing written, nothing overwritten
    if kind.fails:
        assert r.returncode == 1, r.stdout[-500:] + r.stderr[-2000:]
        assert 'Traceback' not in r.stderr, r.stderr[-2000:]
        assert str(bad) in r.stderr and kind.expect.lower() in r.stderr.lower(), r.stderr
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        info = json.loads(r.stdout)
        if kind.name == 'int_slope':                          # HU = 2 x stored - 1024, checked against nibabel
            import nibabel as nib, numpy as np
            img = nib.load(str(bad))
            raw = np.asarray(img.dataobj.get_unscaled())
            assert (info['hu_min'], info['hu_max']) == (2.0 * raw.min() - 1024, 2.0 * raw.max() - 1024)
        if kind.name == 'unknown_structure':
            assert "Unknown structure name 'livr'" in r.stderr and kind.expect in r.stderr


def test_report_batch_over_the_whole_corpus(corpus, tmp_path):
    src, made = corpus
    # the known failures stay out of the batch: an accepted 5000 mm spacing sends the report's resampling
    # to a grid of 200,000 slices (their own tests above record them)
    skip = {made[k][0].name for k in KNOWN_FAILURES}
    data = tmp_path / 'data'
    shutil.copytree(src, data, ignore=lambda d, names: [n for n in names if Path(d) == src and n in skip])
    made = {k: (data / c.name, data / b.relative_to(src)) for k, (c, b) in made.items() if c.name not in skip}
    before = tree_digest(data)
    out = tmp_path / 'out'
    r = cli('report', '--dataset', data, '--csv', out / 'meta.csv')
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert r.returncode == 1, r.stderr[-3000:]              # some cases failed -> non-zero
    m = pd.read_csv(out / 'meta.csv.parts' / 'manifest.csv', keep_default_na=False).set_index('case_id')
    assert m.loc['BDMAP_00000001', 'status'] == 'done' and m.loc['BDMAP_00000002', 'status'] == 'done'
    table = pd.read_csv(out / 'meta.csv')
    assert {'BDMAP_00000001', 'BDMAP_00000002'} <= set(table.case_id)
    for kind in CASE_KINDS:
        if kind.name in KNOWN_FAILURES: continue
        case, bad = made[kind.name]
        row = m.loc[case.name]
        ROWS.append({'kind': kind.name, 'command': 'report --dataset', 'exit': 1 if row.status == 'failed' else 0,
                     'message': (row.error or f'{row.status}')[:220]})
        if kind.fails:
            assert row.status == 'failed', (kind.name, row.to_dict())
            assert case.name in row.error or str(bad) in row.error, (kind.name, row.error)
            assert bad.name in row.error and kind.expect.lower() in row.error.lower(), (kind.name, row.error)
        else:
            assert row.status == 'done', (kind.name, row.error)
    assert peak_gib < 3, f'peak RSS {peak_gib:.1f} GiB: the 4 GiB header was allocated?'
    assert tree_digest(data) == before                      # inputs untouched
    # a re-run resumes: finished cases are skipped and their outputs keep their bytes and times
    parts = out / 'meta.csv.parts'
    done_before = {p.name: p.stat().st_mtime_ns for p in parts.glob('*.json')}
    r2 = cli('report', '--dataset', data, '--csv', out / 'meta.csv')
    assert r2.returncode == 1
    m2 = pd.read_csv(parts / 'manifest.csv', keep_default_na=False).set_index('case_id')
    assert m2.loc['BDMAP_00000001', 'status'] == 'skipped'
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob('*.json')} == done_before


def test_empty_case_folder(tmp_path):
    (tmp_path / 'BDMAP_00000001').mkdir()
    r = cli('info', tmp_path / 'BDMAP_00000001')
    record('empty_case_folder', 'info', r)
    assert r.returncode == 1 and str(tmp_path / 'BDMAP_00000001') in r.stderr and 'no ct.nii.gz' in r.stderr


def test_empty_dataset_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    r = cli('report', '--dataset', tmp_path / 'empty', '--csv', tmp_path / 'out' / 'meta.csv')
    record('empty_dataset_folder', 'report --dataset', r)
    assert r.returncode != 0 and str(tmp_path / 'empty') in r.stderr, r.stdout + r.stderr


def test_output_folder_that_cannot_be_written(good, tmp_path):
    (tmp_path / 'a_file').write_text('not a folder')
    before = tree_digest(good)
    r = cli('report', '--dataset', good, '--csv', tmp_path / 'a_file' / 'meta.csv')
    record('unwritable_output', 'report --dataset', r)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert str(tmp_path / 'a_file') in r.stderr and 'UnwritableOutputError' in r.stderr
    assert (tmp_path / 'a_file').read_text() == 'not a folder' and tree_digest(good) == before


def test_symlink_out_of_the_dataset(good, tmp_path):
    data = tmp_path / 'data'; shutil.copytree(good / 'BDMAP_00000002', data / 'BDMAP_00000002')
    shutil.copytree(good / 'BDMAP_00000001', tmp_path / 'elsewhere')
    (data / 'BDMAP_00000009').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
    r = cli('report', '--dataset', data, '--csv', tmp_path / 'out' / 'meta.csv')
    m = pd.read_csv(tmp_path / 'out' / 'meta.csv.parts' / 'manifest.csv', keep_default_na=False).set_index('case_id')
    ROWS.append({'kind': 'symlink_out_of_dataset', 'command': 'report --dataset', 'exit': r.returncode,
                 'message': (m.loc['BDMAP_00000009', 'error'] if 'BDMAP_00000009' in m.index else 'not listed')
                 or 'read the case outside the dataset'})
    assert m.loc['BDMAP_00000002', 'status'] == 'done'
    assert m.loc['BDMAP_00000009', 'status'] == 'failed' and 'BDMAP_00000009' in m.loc['BDMAP_00000009', 'error']


@pytest.fixture
def no_dac():
    "Run a command as root without the capabilities that let root read any file (so chmod 000 bites)."
    if shutil.which('setpriv') is None: pytest.fail('setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE')
    probe = subprocess.run([*NO_DAC, 'true'], capture_output=True)
    if probe.returncode: pytest.fail(f'cannot drop capabilities here: {probe.stderr.decode()}')
    return NO_DAC


def test_a_file_without_read_permission(good, tmp_path, no_dac):
    data = tmp_path / 'data'; shutil.copytree(good, data)
    bad = data / 'BDMAP_00000002' / 'ct.nii.gz'; bad.chmod(0o000)
    r = cli('info', data / 'BDMAP_00000002', prefix=no_dac)
    record('unreadable_file', 'info', r)
    assert r.returncode == 1 and 'Traceback' not in r.stderr and str(bad) in r.stderr and 'Permission' in r.stderr
    r = cli('report', '--dataset', data, '--csv', tmp_path / 'out' / 'meta.csv', prefix=no_dac)
    assert r.returncode == 1
    m = pd.read_csv(tmp_path / 'out' / 'meta.csv.parts' / 'manifest.csv', keep_default_na=False).set_index('case_id')
    ROWS.append({'kind': 'unreadable_file', 'command': 'report --dataset', 'exit': 1,
                 'message': m.loc['BDMAP_00000002', 'error'][:220]})
    assert m.loc['BDMAP_00000001', 'status'] == 'done' and m.loc['BDMAP_00000002', 'status'] == 'failed'
    assert str(bad) in m.loc['BDMAP_00000002', 'error']


@pytest.fixture(scope='module')
def dicom_cases(good, tmp_path_factory):
    from abdomen_nb.core import read_case
    from abdomen_nb.dicom import write_dicom_series
    root = tmp_path_factory.mktemp('dicom')
    c1, c2 = read_case(good / 'BDMAP_00000001'), read_case(good / 'BDMAP_00000002')
    write_dicom_series(c1, root / 'two_series', axes='LPS')
    write_dicom_series(c2, root / 'two_series' / 'more', axes='LPS')
    files = write_dicom_series(c1, root / 'missing_slice', axes='LPS', descending=True)
    files[len(files) // 2].unlink()
    return root


@pytest.mark.parametrize('command', ['info', 'convert'])
@pytest.mark.parametrize('kind,expect', [('two_series', 'holds 2 series'), ('missing_slice', 'slice(s) missing')])
def test_dicom_folders(dicom_cases, tmp_path, command, kind, expect):
    folder = dicom_cases / kind
    before = tree_digest(folder)
    args = [folder] if command == 'info' else [folder, '--out', tmp_path / 'case']
    r = cli(command, *args)
    record(f'dicom_{kind}', command, r)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert str(folder) in r.stderr and expect in r.stderr
    assert not (tmp_path / 'case').exists() and tree_digest(folder) == before


def test_case_ids_that_leave_the_dataset_or_repeat(good):
    """No command takes a list of case ids (datasets are listed from their folder), so an id like '../x' or a
    repeated id can only come from Python; there it is refused before anything is read or written."""
    from abdomen_nb.batch import DuplicateCaseIdError, run_batch
    from abdomen_nb.core import AtlasDataset, UnsafeCaseIdError
    ds = AtlasDataset(good)
    with pytest.raises(UnsafeCaseIdError, match=r"'\.\./x'"):
        ds['../x']
    with pytest.raises(DuplicateCaseIdError, match='more than once'):
        run_batch(['BDMAP_00000001', 'BDMAP_00000001'], print, good / '_never', progress=False)
    assert not (good / '_never').exists()
    ROWS.append({'kind': 'case_id_leaving_dataset', 'command': "AtlasDataset['../x'] (Python)", 'exit': '-',
                 'message': "UnsafeCaseIdError: Case id '../x' is not a plain folder name"})
    ROWS.append({'kind': 'duplicate_case_ids', 'command': 'run_batch (Python)', 'exit': '-',
                 'message': "DuplicateCaseIdError: the case list names ['BDMAP_00000001'] more than once"})
