"""Chapter 12: the AbdomenAtlas attention-guided annotation loop (attention parts, ranking, label priority,
the simulated reviewer, resume, and the loop's curves against the phantom's truth)."""
import numpy as np, pandas as pd, pytest, torch

from abdomen_nb import atlas
from abdomen_nb.atlas import (CURVE_COLUMNS, REVIEW_MINUTES, LoopInputError, assemble_labels, attention_map,
                              attention_parts, binary_entropy, rank_cases, review_queue, run_atlas_loop,
                              simulate_review)
from abdomen_nb.core import AbdomenNBError, dice, read_nifti
from abdomen_nb.phantom import make_case

torch.set_num_threads(1)
# the tiny preset on 8 mini phantoms (2 play the originally labelled data), 2 rounds of review: about 40 s CPU a loop
SMALL = dict(iterations=2, review_share=0.2, seed=0)


def test_identical_models_have_no_inconsistency():
    p = np.random.default_rng(0).random((1, 10, 10, 10)).astype(np.float32)
    parts = attention_parts({'liver': np.repeat(p, 3, 0)}, cleaned=False)
    assert not parts['liver']['inconsistency'].any()
    q = np.concatenate([np.zeros_like(p), np.ones_like(p)])        # two models that disagree everywhere
    assert attention_parts({'liver': q}, cleaned=False)['liver']['inconsistency'].all()


def test_entropy_is_maximal_at_one_half():
    ps = np.linspace(0, 1, 101)
    h = binary_entropy(ps)
    assert ps[np.argmax(h)] == pytest.approx(0.5)
    assert h.max() == pytest.approx(np.log(2), abs=1e-6)
    half = np.full((2, 9, 9, 9), 0.5, np.float32)
    assert attention_parts({'liver': half})['liver']['uncertainty'].all()   # survives the opening
    assert not attention_parts({'liver': np.ones_like(half)})['liver']['uncertainty'].any()


def test_overlap_and_cleaning():
    a = np.zeros((1, 12, 12, 12), np.float32); a[0, 2:8, 2:8, 2:8] = 1
    b = np.zeros_like(a); b[0, 5:11, 2:8, 2:8] = 1
    parts = attention_parts({'liver': a, 'stomach': b})
    assert parts['liver']['overlap'].sum() == 3 * 6 * 6
    assert np.array_equal(parts['liver']['overlap'], parts['stomach']['overlap'])
    speck = np.zeros((2, 12, 12, 12), np.float32); speck[1, 6, 6, 6] = 1   # one voxel of disagreement
    assert not attention_parts({'liver': speck})['liver']['inconsistency'].any()   # removed by 2 erosions
    heat = attention_map({'liver': a, 'stomach': b})['liver']
    assert heat.dtype == np.uint8 and heat.max() == 1


def test_bad_attention_input():
    with pytest.raises(AbdomenNBError):
        attention_parts({'liver': np.zeros((2, 4, 4, 4)), 'spleen': np.zeros((2, 5, 4, 4))})


def test_ranking_order_and_queue():
    def heat(n_liver, n_spleen):
        h = {'liver': np.zeros(20, np.uint8), 'spleen': np.zeros(20, np.uint8)}
        h['liver'][:n_liver] = 1; h['spleen'][:n_spleen] = 3
        return h
    r = rank_cases({'a': heat(1, 1), 'b': heat(9, 2), 'c': heat(3, 3), 'd': heat(0, 0)})
    assert list(r.case_id) == ['b', 'c', 'a', 'd']
    assert list(r.attention_voxels) == [11, 6, 2, 0]
    assert r.organs[0] == 'liver spleen'        # 9 > 2*3
    assert r.organs[1] == 'spleen liver'        # 3*3 > 3
    assert list(review_queue(r, 0.5).case_id) == ['b', 'c']
    assert list(review_queue(r, 0.01).case_id) == ['b']   # at least one case
    with pytest.raises(AbdomenNBError): review_queue(r, 0)


def test_label_priority_and_provenance():
    o, rv, ps = (np.full((3, 3, 3), v, bool) for v in (True, False, True))
    lab, prov = assemble_labels(['liver', 'spleen', 'aorta'], {'liver': o}, {'liver': rv, 'spleen': rv},
                                {'liver': ps, 'spleen': ps, 'aorta': ps})
    assert prov == {'liver': 'original', 'spleen': 'revised', 'aorta': 'pseudo'}
    assert lab['liver'].all() and not lab['spleen'].any() and lab['aorta'].all()
    with pytest.raises(AbdomenNBError): assemble_labels(['pancreas'], pseudo={'liver': ps})


def test_reviewer_fixes_only_what_it_is_shown():
    truth = make_case(3, size='mini', tumors='none').masks['liver']
    label = np.zeros(truth.shape, bool)
    shown = np.zeros(truth.shape, np.uint8); shown[: truth.shape[0] // 2] = 2
    fixed = simulate_review({'liver': label}, {'liver': truth}, {'liver': shown})['liver']
    assert np.array_equal(fixed[: truth.shape[0] // 2], truth[: truth.shape[0] // 2])
    assert not fixed[truth.shape[0] // 2:].any()


@pytest.fixture(scope='module')
def cohort():
    return [make_case(s, size='mini', tumors='none') for s in range(8)]


@pytest.fixture(scope='module')
def attention_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp('atlas') / 'attention'
    return out, run_atlas_loop(cohort, out, order='attention', **SMALL)


def test_curves_and_run_folder(attention_run, cohort):
    out, df = attention_run
    assert list(df.columns) == CURVE_COLUMNS and list(df.iteration) == [0, 1, 2]
    assert df.equals(pd.read_csv(out / 'curves.csv'))
    assert list(df.reviewer_minutes) == [REVIEW_MINUTES * n for n in df.cases_reviewed]
    d = out / 'iter_01'
    for f in ['ranking.csv', 'review_queue.csv', 'provenance.csv', 'metrics.json', 'done.json',
              'models/m0/best.pt', 'models/m0/config.json', 'models/m1/best.pt']:
        assert (d / f).exists(), f
    # the labels on disk score what curves.csv says, against the phantom's own masks
    prov = pd.read_csv(d / 'provenance.csv')
    assert set(prov[prov.case_id.isin([c.case_id for c in cohort[:2]])].source) == {'original'}
    scores = []
    for c in cohort[2:]:
        for organ in atlas.TINY_CLASSES:
            lab, aff = read_nifti(d / 'labels' / c.case_id / f'{organ}.nii.gz')[:2]
            assert np.allclose(aff, c.affine)
            scores.append(dice(lab.astype(bool), c.masks[organ]))
    assert np.mean(scores) == pytest.approx(df.label_dsc[1], abs=1e-9)
    hm, aff = read_nifti(d / 'heatmaps' / cohort[2].case_id / 'liver.nii.gz')[:2]
    assert hm.dtype == np.uint8 and hm.shape == cohort[2].shape and np.allclose(aff, cohort[2].affine)


def test_label_quality_does_not_fall(attention_run):
    lab = attention_run[1].label_dsc.to_numpy()
    assert np.all(np.diff(lab) >= 0) and lab[-1] > lab[0]


def test_attention_beats_random_at_equal_minutes(attention_run, cohort, tmp_path):
    att = attention_run[1]
    rnd = run_atlas_loop(cohort, tmp_path / 'random', order='random', **SMALL)
    assert list(att.reviewer_minutes) == list(rnd.reviewer_minutes)
    assert att.label_dsc.iloc[-1] > rnd.label_dsc.iloc[-1]


def test_resume_after_killed_iteration(attention_run, cohort, tmp_path, monkeypatch):
    out = tmp_path / 'killed'
    real, calls = atlas.rank_cases, []
    def dies_in_round_2(heat):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt('killed')
        return real(heat)
    monkeypatch.setattr(atlas, 'rank_cases', dies_in_round_2)
    with pytest.raises(KeyboardInterrupt): run_atlas_loop(cohort, out, order='attention', **SMALL)
    monkeypatch.setattr(atlas, 'rank_cases', real)
    assert (out / 'iter_02').exists() and not (out / 'iter_02' / 'done.json').exists()
    with pytest.raises(LoopInputError): run_atlas_loop(cohort, out, order='attention', **SMALL)   # no silent overwrite
    df = run_atlas_loop(cohort, out, order='attention', resume=True, **SMALL)
    ref_out, ref = attention_run
    pd.testing.assert_frame_equal(df, ref)
    for f in ['provenance.csv', 'review_queue.csv', 'curves.csv']:
        p = f if f == 'curves.csv' else f'iter_02/{f}'
        assert (out / p).read_bytes() == (ref_out / p).read_bytes(), p
    a = torch.load(out / 'iter_02/models/m0/best.pt', weights_only=True)
    b = torch.load(ref_out / 'iter_02/models/m0/best.pt', weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_loop_input(cohort, tmp_path):
    with pytest.raises(AbdomenNBError): run_atlas_loop(cohort[:1], tmp_path / 'a')
    with pytest.raises(AbdomenNBError): run_atlas_loop(cohort, tmp_path / 'b', order='alphabetical')
    with pytest.raises(AbdomenNBError): run_atlas_loop(cohort, tmp_path / 'c', preset='huge')
