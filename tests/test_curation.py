"""The ScaleMAI curation loop (chapter 51): operating point, curves, resume, determinism, `abdomen-nb curate`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from abdomen_nb import curation
from abdomen_nb.core import AbdomenNBError, dice, read_nifti, write_case, write_json
from abdomen_nb.phantom import make_case
from abdomen_nb.pipeline import main as cli

torch.set_num_threads(1)
PANC = [{'organ': 'pancreas', 'type': 'pdac'}]
FAST = dict(init_steps=8, finetune_steps=4)   # fewer steps than the tiny preset: the loop's logic, not the model, is tested


@pytest.fixture(scope='module')
def cohort():
    "8 coarse phantoms, a pancreatic tumor in every other one (the truth is the phantom's own masks)."
    return [make_case(s, tumors=PANC if s % 2 else 'none', size=6.0, case_id=f'P{s:03d}') for s in range(8)]


@pytest.fixture(scope='module')
def run_a(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp('a') / 'run'
    return out, curation.run_scalemai_loop(cohort, out, iterations=2, seed=0, **FAST)


def test_operating_point_constructed():
    s, y = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0]
    op = curation.operating_point(s, y)                      # 90% sensitivity: all 4 tumors, threshold 0.3
    assert op == dict(threshold=0.3, sensitivity=1.0, specificity=0.5)
    op = curation.operating_point(s, y, min_sensitivity=0.5)  # 2 of 4 tumors suffice: 0.8, healthy all below
    assert op == dict(threshold=0.8, sensitivity=0.5, specificity=1.0)
    with pytest.raises(curation.CurationInputError): curation.operating_point([0.1, 0.2], [1])


def test_curves_file_format(run_a):
    out, curves = run_a
    text = (out / 'curves.csv').read_text().splitlines()
    assert text[0] == 'iteration,label_dsc,model_dsc,sensitivity,specificity,cases_reviewed,reviewer_minutes'
    assert len(text) == 4
    df = pd.read_csv(out / 'curves.csv')
    assert list(df.iteration) == [0, 1, 2]
    assert (df.reviewer_minutes == curation.REVIEW_MINUTES * df.cases_reviewed).all()
    assert df.cases_reviewed.is_monotonic_increasing and df.cases_reviewed.iloc[0] == 0
    for k in range(3):
        d = out / f'iter_{k:02d}'
        assert (d / 'done.json').exists() and (d / 'model' / 'config.json').exists()
        sd = torch.load(d / 'model' / 'best.pt', weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in sd.values())
        m = json.loads((d / 'metrics.json').read_text())
        assert 0 <= m['operating_point']['threshold'] <= 1


def test_label_quality_against_phantom_truth_does_not_fall(run_a, cohort):
    out, curves = run_a
    truth = {c.case_id: c for c in cohort}
    pool = json.loads((out / 'settings.json').read_text())['split']['pool']
    measured = []
    for k in range(3):
        d = out / f'iter_{k:02d}' / 'labels'
        ds = []
        for cid in pool:
            for s in curation.STRUCTURES:
                lab = read_nifti(d / cid / f'{s}.nii.gz')[0].astype(bool)
                t = truth[cid].masks[s] if s in truth[cid].masks else np.zeros(truth[cid].shape, bool)
                ds.append(dice(lab, np.asarray(t, bool)))
        measured.append(np.mean(ds))
    np.testing.assert_allclose(measured, curves.label_dsc, atol=1e-9)
    assert measured[0] < 0.95                                 # the pool really starts noisy
    assert all(b >= a - 1e-9 for a, b in zip(measured, measured[1:])), measured
    assert measured[-1] > measured[0]                         # and the loop fixed something


def test_resume_after_killed_iteration_same_final_state(run_a, cohort, tmp_path, monkeypatch):
    out_a, curves_a = run_a
    out = tmp_path / 'run'
    real, calls = curation.model_metrics, []
    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt('killed in iteration 2')
        return real(*a, **k)
    monkeypatch.setattr(curation, 'model_metrics', dies)
    with pytest.raises(KeyboardInterrupt): curation.run_scalemai_loop(cohort, out, iterations=2, seed=0, **FAST)
    monkeypatch.setattr(curation, 'model_metrics', real)
    assert not (out / 'iter_02' / 'done.json').exists() and (out / 'iter_01' / 'done.json').exists()
    with pytest.raises(AbdomenNBError, match='resume'): curation.run_scalemai_loop(cohort, out, iterations=2, seed=0, **FAST)
    curves = curation.run_scalemai_loop(cohort, out, iterations=2, seed=0, resume=True, **FAST)
    assert (out / 'curves.csv').read_bytes() == (out_a / 'curves.csv').read_bytes()   # same seed -> same curves
    pd.testing.assert_frame_equal(curves, curves_a)
    for p in sorted((out_a / 'iter_02' / 'labels').rglob('*.nii.gz')):
        q = out / p.relative_to(out_a)
        assert np.array_equal(read_nifti(p)[0], read_nifti(q)[0]), q
    sa = torch.load(out_a / 'iter_02' / 'model' / 'best.pt', weights_only=True)
    sb = torch.load(out / 'iter_02' / 'model' / 'best.pt', weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_split_is_stratified_by_tumor():
    ids = [f'P{i:03d}' for i in range(10)]
    pos = dict(zip(ids, [i % 2 == 1 for i in range(10)]))
    for seed in range(5):
        sp = curation.split_cases(ids, seed, 0.2, 0.3, positive=list(pos.values()))
        assert sorted(sp['test'] + sp['clean'] + sp['pool']) == ids                       # a partition
        assert (len(sp['test']), len(sp['clean'])) == (3, 2)
        for part in ('test', 'clean', 'pool'): assert {pos[c] for c in sp[part]} == {True, False}, (seed, part, sp)
        assert sp == curation.split_cases(ids, seed, 0.2, 0.3, positive=list(pos.values()))   # seeded
    one_kind = curation.split_cases(ids, 0, 0.2, 0.3, positive=[True] * 10)              # no healthy case: still a split
    assert sum(map(len, one_kind.values())) == 10
    with pytest.raises(curation.CurationInputError, match='entries'): curation.split_cases(ids, 0, positive=[True])


def test_synthetic_cases_use_trusted_healthy_cases_only(cohort):
    cases = {c.case_id: c for c in cohort}
    trusted = {cid: {s: curation.truth_mask(c, s) for s in curation.STRUCTURES} for cid, c in cases.items()}
    syn = curation.synthetic_cases(cases, trusted, n=2, seed=0)
    healthy = [cid for cid, c in cases.items() if not curation.truth_mask(c, 'pancreatic_lesion').any()]
    assert len(syn) == 2 and all(c.case_id.removesuffix('_synthetic') in healthy for c in syn)
    for c in syn:
        src = cases[c.case_id.removesuffix('_synthetic')]
        les = c.masks['pancreatic_lesion']
        assert les.any() and not curation.truth_mask(src, 'pancreatic_lesion').any()      # the source is unchanged
        grown = np.zeros_like(les); grown[src.masks['pancreas']] = True
        assert (les & ndimage.binary_dilation(grown, iterations=1)).sum() >= 0.8 * les.sum()  # the tumor is in the pancreas
        assert not np.array_equal(c.ct, src.ct)                                          # and painted into the CT
    assert curation.synthetic_cases(cases, trusted, n=0) == []
    tumor_only = {cid: lab for cid, lab in trusted.items() if cid not in healthy}
    assert curation.synthetic_cases(cases, tumor_only, n=3) == []


def test_m_step_trains_on_synthetic_tumors(cohort, tmp_path, monkeypatch):
    seen, real = [], curation._train
    def spy(cfg, items, steps, d, prev):
        seen.append([c.case_id for c in items]); return real(cfg, items, steps, d, prev)
    monkeypatch.setattr(curation, '_train', spy)
    out = tmp_path / 'syn'
    curation.run_scalemai_loop(cohort, out, iterations=1, seed=0, synthetic=1, **FAST)
    for k, ids in enumerate(seen):
        m = json.loads((out / f'iter_{k:02d}' / 'metrics.json').read_text())
        assert len(m['synthetic']) == 1 and m['synthetic'][0] in ids
        split = json.loads((out / 'settings.json').read_text())['split']
        assert len(ids) == len(set(ids)) == len(split['clean']) + len(split['pool']) + 1   # real cases + one synthetic


def test_baselines_train_once_at_the_loops_compute(cohort, tmp_path, monkeypatch):
    out = tmp_path / 'base'
    table = curation.baselines(cohort, out, iterations=2, seed=0, **FAST)
    assert list(table.columns) == curation.BASELINE_COLUMNS and list(table.baseline) == ['clean_only', 'noisy_once']
    assert table.steps.tolist() == [FAST['init_steps'] + 2 * FAST['finetune_steps']] * 2
    split = curation.split_cases([c.case_id for c in cohort], 0, 0.2, 0.3,
                                 positive=[bool(curation.truth_mask(c, 'pancreatic_lesion').any()) for c in cohort])
    assert table.cases.tolist() == [len(split['clean']), len(split['clean']) + len(split['pool'])]
    assert (table.reviewer_minutes == 0).all()
    pd.testing.assert_frame_equal(pd.read_csv(out / 'baselines.csv'), table)
    with pytest.raises(AbdomenNBError, match='resume'): curation.baselines(cohort, out, iterations=2, seed=0, **FAST)
    monkeypatch.setattr(curation, '_train', lambda *a, **k: (_ for _ in ()).throw(AssertionError('retrained')))
    again = curation.baselines(cohort, out, iterations=2, seed=0, resume=True, **FAST)   # finished ones are kept
    pd.testing.assert_frame_equal(again, table)


def test_bad_input(cohort, tmp_path):
    with pytest.raises(curation.CurationInputError, match='at least 5'): curation.run_scalemai_loop(cohort[:3], tmp_path / 'r')
    with pytest.raises(curation.CurationInputError, match='preset'): curation.run_scalemai_loop(cohort, tmp_path / 'r', preset='huge')
    with pytest.raises(curation.CurationInputError, match='not a CTCase'): curation.run_scalemai_loop([1] * 6, tmp_path / 'r')
    with pytest.raises(curation.CurationInputError, match='Unknown loop settings'):
        curation.run_scalemai_loop(cohort, tmp_path / 'r', steps=3)
    no_panc = [make_case(0, tumors='none', size=8.0, case_id=f'Q{i}') for i in range(1)]
    no_panc[0].masks.pop('pancreas')
    with pytest.raises(AbdomenNBError, match='simulated reviewer'):
        curation.run_scalemai_loop(no_panc + cohort[:5], tmp_path / 'r')


def _dataset(cases, root: Path, truth=True) -> Path:
    for i, c in enumerate(cases):
        d = write_case(c, root / f'BDMAP_{i + 1:08d}')
        if truth: write_json(c.meta['truth'], d / 'truth.json')
    return root


def test_cli_end_to_end(cohort, tmp_path, capsys):
    ds = _dataset(cohort[:6], tmp_path / 'ds')
    out = tmp_path / 'run'
    assert cli(['curate', str(ds), '--out', str(out), '--iterations', '1', '--seed', '1']) == 0
    df = pd.read_csv(out / 'curves.csv')
    assert list(df.columns) == curation.CURVE_COLUMNS and list(df.iteration) == [0, 1]
    assert df.label_dsc.iloc[1] >= df.label_dsc.iloc[0] - 1e-9
    before = (out / 'curves.csv').read_bytes()
    capsys.readouterr()
    assert cli(['curate', str(ds), '--out', str(out), '--iterations', '1']) == 1     # finished run: refused
    err = capsys.readouterr().err
    assert 'finished' in err and '--overwrite' in err and 'Traceback' not in err
    assert cli(['curate', str(ds), '--out', str(out), '--iterations', '1', '--seed', '1', '--resume']) == 0
    assert (out / 'curves.csv').read_bytes() == before


def test_cli_synthetic_and_baselines(cohort, tmp_path, capsys):
    ds = _dataset(cohort[:6], tmp_path / 'ds')
    out = tmp_path / 'run'
    assert cli(['curate', str(ds), '--out', str(out), '--iterations', '0', '--synthetic', '1', '--baselines']) == 0
    assert 'baselines.csv' in capsys.readouterr().out
    table = pd.read_csv(out / 'baselines' / 'baselines.csv')
    assert list(table.baseline) == ['clean_only', 'noisy_once']
    assert json.loads((out / 'settings.json').read_text())['synthetic'] == 1
    assert len(json.loads((out / 'iter_00' / 'metrics.json').read_text())['synthetic']) == 1
    assert cli(['curate', str(ds), '--out', str(tmp_path / 'r'), '--synthetic', '-1']) == 1


def test_cli_atlas_loop(cohort, tmp_path, capsys):
    ds = _dataset(cohort[:4], tmp_path / 'ds')
    out = tmp_path / 'run'
    assert cli(['curate', str(ds), '--out', str(out), '--loop', 'atlas', '--iterations', '0']) == 0
    assert list(pd.read_csv(out / 'curves.csv').columns) == curation.CURVE_COLUMNS
    capsys.readouterr()
    assert cli(['curate', str(ds), '--out', str(tmp_path / 'r2'), '--loop', 'atlas', '--baselines']) == 1
    assert 'ScaleMAI' in capsys.readouterr().err


def test_cli_bad_input(cohort, tmp_path, capsys):
    ds = _dataset(cohort[:5], tmp_path / 'nt', truth=False)
    assert cli(['curate', str(ds), '--out', str(tmp_path / 'r')]) == 1
    err = capsys.readouterr().err
    assert 'truth.json' in err and 'simulated' in err and 'Traceback' not in err
    assert cli(['curate', str(tmp_path / 'missing'), '--out', str(tmp_path / 'r')]) == 1
    assert 'does not exist' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert cli(['curate', str(tmp_path / 'empty'), '--out', str(tmp_path / 'r')]) == 1
    assert 'no AbdomenAtlas case' in capsys.readouterr().err
    assert cli(['curate', str(ds), '--out', str(tmp_path / 'r'), '--iterations', '-1']) == 1
