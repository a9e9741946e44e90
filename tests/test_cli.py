"""The `abdomen-nb` command line end to end, run as a user runs it (a subprocess of the console script)."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

EXE = Path(sys.executable).with_name('abdomen-nb')


def run(*args, cwd=None):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_command():
    r = run('--help')
    assert r.returncode == 0
    for cmd in ['info', 'demo', 'phantom', 'convert', 'viewer', 'segment', 'evaluate', 'report', 'vqa', 'synth',
                'text2ct', 'critic', 'curate']:
        assert f'  {cmd}' in r.stdout


def test_every_command_runs_or_says_it_is_planned(capsys):
    # in-process: each subprocess would pay the ~10 s MONAI import again (the console script itself is run above)
    from abdomen_nb.pipeline import SUBCOMMANDS, main
    for cmd in SUBCOMMANDS:
        try: rc = main([cmd, '--help'])
        except SystemExit as e: rc = e.code or 0
        out, err = capsys.readouterr()
        assert rc in (0, 3), (cmd, err[-2000:])
        if rc == 3: assert 'planned' in err, (cmd, err)
        else: assert 'usage' in out.lower(), (cmd, out[:500])


def test_unknown_command_fails():
    r = run('frobnicate')
    assert r.returncode == 2 and 'unknown command' in r.stderr


def test_info_on_an_lps_case(tmp_path):
    aff = np.array([[-0.8, 0, 0, 10.], [0, -0.8, 0, 20.], [0, 0, 2.0, 30.], [0, 0, 0, 1.]])
    d = tmp_path / 'BDMAP_00000007'; (d / 'segmentations').mkdir(parents=True)
    ct = np.full((20, 18, 8), -1000, np.int16); ct[5:15, 4:14, 2:6] = 60
    nib.save(nib.Nifti1Image(ct, aff), str(d / 'ct.nii.gz'))
    nib.save(nib.Nifti1Image((ct > 0).astype(np.uint8), aff), str(d / 'segmentations' / 'spleen.nii.gz'))
    r = run('info', d, '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['orientation_on_disk'] == 'LPS'
    assert info['shape'] == [20, 18, 8]
    assert info['spacing_mm'] == pytest.approx([0.8, 0.8, 2.0])
    assert info['structures']['spleen']['voxels'] == 10 * 10 * 4
    assert info['structures']['spleen']['volume_cm3'] == pytest.approx(400 * 0.8 * 0.8 * 2 / 1000, abs=0.01)
    assert info['hu_min'] == -1000 and info['hu_max'] == 60


def test_info_on_a_missing_case_says_what_is_wrong(tmp_path):
    (tmp_path / 'BDMAP_1').mkdir()
    r = run('info', tmp_path / 'BDMAP_1')
    assert r.returncode == 1 and 'no ct.nii.gz' in r.stderr


def test_demo_writes_an_overview_page(tmp_path):
    r = run('demo', '--out', tmp_path / 'demo', '--n', 2)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / 'demo' / 'index.html').read_text()
    assert 'BDMAP_00000001' in page and '<img' in page
    for img in page.split('<img src="')[1:]:
        assert (tmp_path / 'demo' / img.split('"')[0]).exists()
    # a second run reuses the finished cohort and keeps its files
    before = (tmp_path / 'demo' / 'data' / 'BDMAP_00000001' / 'ct.nii.gz').stat().st_mtime_ns
    assert run('demo', '--out', tmp_path / 'demo', '--n', 2).returncode == 0
    assert (tmp_path / 'demo' / 'data' / 'BDMAP_00000001' / 'ct.nii.gz').stat().st_mtime_ns == before
