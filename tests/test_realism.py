"""Radiomics pattern analysis (chapter 43): features with closed forms, against scikit-image, on procedural
tumors whose drawn attenuation is known, and the two-sample comparison on groups of known difference."""
import numpy as np
import pandas as pd
import pytest

from abdomen_nb import realism, synth
from abdomen_nb.phantom import make_case


def test_first_order_closed_forms():
    f = realism.first_order(np.full(30, 12.0))
    assert (f['std'], f['skewness'], f['entropy'], f['uniformity']) == (0.0, 0.0, 0.0, 1.0)
    # four equally filled bins: 2 bits, uniformity 1/4; mean and IQR of 0/40/80/120 repeated
    v = np.repeat([0.0, 40.0, 80.0, 120.0], 25)
    f = realism.first_order(v)
    assert f['entropy'] == pytest.approx(2.0) and f['uniformity'] == pytest.approx(0.25)
    assert f['mean'] == pytest.approx(60.0) and f['iqr'] == pytest.approx(np.subtract(*np.percentile(v, [75, 25])))
    assert f['kurtosis'] == pytest.approx(1.64)          # a uniform on 4 points: 1.64 (Pearson's, normal = 3)
    with pytest.raises(ValueError, match='no voxels'): realism.first_order(np.array([]))


def test_glcm_of_a_checkerboard_and_against_skimage():
    from skimage.feature import graycomatrix, graycoprops
    # levels alternate between two bins in x and y: axial neighbours differ, diagonal ones do not
    ct = np.where((np.indices((8, 8, 3)).sum(0) - np.indices((8, 8, 3))[2]) % 2 == 0, 0.0, 95.0)
    q = realism.quantise(ct, np.ones(ct.shape, bool))
    d = int(q.max()) - int(q.min())
    g = realism.glcm_features(realism.glcm(q))
    # pairs at 0 and 90 degrees (7*8 each way per slice) all differ by d; at 45 and 135 (7*7) none do
    frac = (2 * 56) / (2 * 56 + 2 * 49)
    assert g['glcm_contrast'] == pytest.approx(frac * d ** 2) and g['glcm_dissimilarity'] == pytest.approx(frac * d)
    rng = np.random.default_rng(3)
    vol = rng.normal(40, 40, (16, 12, 4))
    q = realism.quantise(vol, np.ones(vol.shape, bool))
    ref = sum(graycomatrix(q[:, :, z] - 1, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True)[:, :, 0, :].sum(-1)
              for z in range(4))
    P = realism.glcm(q)
    np.testing.assert_array_equal(P, ref)
    g = realism.glcm_features(P)
    for k in ['contrast', 'dissimilarity', 'homogeneity', 'correlation', 'ASM']:
        assert g['glcm_energy' if k == 'ASM' else f'glcm_{k}'] == pytest.approx(graycoprops(ref[:, :, None, None].astype(float), k)[0, 0], rel=1e-10)
    # voxels outside the mask do not count; an empty mask gives NaN, not an error
    part = np.zeros(vol.shape, bool); part[3:10, 2:9] = True
    wild = vol.copy(); wild[~part] = -900
    np.testing.assert_array_equal(realism.glcm(realism.quantise(vol, part)), realism.glcm(realism.quantise(wild, part)))
    assert np.isnan(realism.glcm_features(np.zeros((32, 32)))['glcm_contrast'])


def test_rim_contrast_follows_the_drawn_attenuation():
    healthy = make_case(101, tumors='none')
    for att, sign in [('hypo', -1), ('hyper', 1)]:
        c = synth.insert_tumors(healthy, 'liver', size_type='medium', seed=4, attenuation=att)
        tumors = realism.tumors_of(c, 'liver')
        assert tumors, att
        f = realism.tumor_features(c, tumors[0])
        assert np.sign(f['rim_contrast_hu']) == sign, (att, f)
        assert f['volume_ml'] == pytest.approx(tumors[0].sum() * np.prod(c.spacing) / 1000)
    assert realism.tumors_of(healthy, 'liver') == []


def test_compare_features_finds_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'source': ['a'] * 40 + ['b'] * 40,
                       'same': rng.normal(0, 1, 80),
                       'shifted': np.r_[rng.normal(0, 1, 40), rng.normal(2, 1, 40)]})
    out = realism.compare_features(df, 'a', 'b')
    assert out.loc['shifted', 'q'] < 1e-4 and out.loc['same', 'p'] > 0.05
    assert (out['q'] >= out['p'] - 1e-12).all()
    assert out.loc['shifted', 'median_b'] - out.loc['shifted', 'median_a'] == pytest.approx(2, abs=0.6)
    xy = realism.embed_2d(df, ['same', 'shifted'])
    assert xy.shape == (80, 2)


# --- GLRLM / GLSZM (PyRadiomics), truth entries, cohorts -----------------------------------------

def test_pyradiomics_closed_forms():
    pytest.importorskip('radiomics')
    q = np.zeros((12, 12, 12), np.uint8); q[2:7, 2:7, 2:7] = 4              # one zone of 125 voxels
    r = realism.pyradiomics_features(q, (1.0, 1.0, 1.0))
    assert r['glszm_ZonePercentage'] == pytest.approx(1 / 125) and r['glszm_LargeAreaEmphasis'] == pytest.approx(125 ** 2)
    x, y, z = np.indices((9, 9, 9))                                           # no two neighbours share a level
    r = realism.pyradiomics_features((1 + x % 3 + 3 * (y % 3) + 9 * (z % 3)).astype(np.uint8), (1.0, 1.0, 1.0))
    assert r['glrlm_ShortRunEmphasis'] == pytest.approx(1) and r['glszm_SmallAreaEmphasis'] == pytest.approx(1)
    # anisotropic spacing reaches PyRadiomics in (x, y, z) order: a slab along z is one zone either way
    s = np.zeros((6, 6, 10), np.uint8); s[1:3, 1:3, :] = 2
    assert realism.pyradiomics_features(s, (0.7, 0.7, 3.0))['glszm_ZonePercentage'] == pytest.approx(1 / 40)


def test_tumor_features_with_and_without_pyradiomics(monkeypatch):
    case = synth.insert_tumors(make_case(100, tumors='none'), 'liver', size_type='medium', seed=1)
    L = realism.tumors_of(case, 'liver')[0]
    without = realism.tumor_features(case, L, pyradiomics=False)
    assert not any(k.startswith(('glrlm', 'glszm')) for k in without)
    monkeypatch.setattr(realism, 'has_pyradiomics', lambda: False)            # the fallback when it is absent
    assert realism.tumor_features(case, L) == without
    with pytest.raises(ImportError, match='pyradiomics-bhklab'): realism.pyradiomics_features(np.ones((3, 3, 3), np.uint8), (1, 1, 1))


def test_lesion_entry_and_cohort_text():
    case = make_case(0, tumors='random')                                      # the phantom records one liver metastasis
    table, views = realism.tumor_cohort([case], 'phantom', min_voxels=1)   # a 9 mm tumor: 5 voxels
    truth = [l for l in case.meta['truth']['lesions'] if l['organ'] == 'liver']
    assert len(table) == len(views) == len(truth) == 1
    assert f"{truth[0]['longest_diameter_mm'] / 10:.1f} cm" in table['text'][0] and 'metastasis' in table['text'][0]
    assert views[0].dtype == np.uint8 and views[0].shape == (64, 64) and views[0].std() > 0
    L = realism.tumors_of(case, 'liver', min_voxels=1)[0]
    assert realism.lesion_entry(case, L)['id'] == truth[0]['id']
    assert realism.lesion_entry(case, np.zeros_like(L)) is None


# --- the visual Turing test -----------------------------------------------------------------------

def _feats(n_a=10, n_b=14, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 1, n_a + n_b); f[n_a:] += shift
    return pd.DataFrame(dict(source=['a'] * n_a + ['b'] * n_b, text=[f't{i}' for i in range(n_a + n_b)], f=f,
                             g=rng.normal(0, 1, n_a + n_b)))


def test_turing_set_balanced_shuffled_seeded():
    feats = _feats()
    key = realism.turing_set(feats, 'a', 'b', seed=3)
    assert key['truth'].value_counts().to_dict() == {'real': 10, 'synthetic': 10}
    assert (feats.loc[key['row'], 'source'].to_numpy() == np.where(key['truth'] == 'real', 'a', 'b')).all()
    assert (feats.loc[key['row'], 'text'].to_numpy() == key['text'].to_numpy()).all()
    assert key['item_id'].is_unique and key.equals(realism.turing_set(feats, 'a', 'b', seed=3))
    assert not key.equals(realism.turing_set(feats, 'a', 'b', seed=4))
    with pytest.raises(realism.TuringInputError, match='Too few'): realism.turing_set(feats, 'a', 'b', n=12)


def test_read_answers_checks_the_file(tmp_path):
    key = realism.turing_set(_feats(), 'a', 'b')
    p = tmp_path / 'a.csv'
    p.write_text('item_id,reader,answer\nT001,r,real\nT002,r,SYNTHETIC\nT001,r,synthetic\n')
    a = realism.read_answers(p, key)
    assert list(a.columns) == realism.ANSWER_COLUMNS and len(a) == 2
    assert a.set_index('item_id').loc['T001', 'answer'] == 'synthetic'       # the later answer counts
    p.write_text('item_id,reader,answer\nT001,r,maybe\n')
    with pytest.raises(realism.TuringInputError, match=r"rows \[2\].*maybe"): realism.read_answers(p, key)
    p.write_text('item_id,reader,answer\nX999,r,real\n')
    with pytest.raises(realism.TuringInputError, match='not in the key'): realism.read_answers(p, key)
    p.write_text('item_id,answer\nT001,real\n')
    with pytest.raises(realism.TuringInputError, match='reader'): realism.read_answers(p, key)


def test_score_reader_closed_forms():
    key = realism.turing_set(_feats(), 'a', 'b')
    syn = key['truth'] == 'synthetic'
    perfect = pd.DataFrame(dict(item_id=key['item_id'], reader='p', answer=key['truth']))
    wrong_two = perfect.assign(reader='w', answer=np.where(syn, 'synthetic', 'real'))
    wrong_two.loc[np.flatnonzero(syn)[:2], 'answer'] = 'real'                 # two synthetic tumors missed
    s = realism.score_reader(key, pd.concat([perfect, wrong_two]))
    assert (s.loc['p', 'accuracy'], s.loc['p', 'sensitivity'], s.loc['p', 'specificity']) == (1.0, 1.0, 1.0)
    assert s.loc['w', 'sensitivity'] == pytest.approx(8 / 10) and s.loc['w', 'specificity'] == 1.0
    assert s.loc['w', 'accuracy'] == pytest.approx(18 / 20)
    # Wilson interval of 8/10: 0.490-0.943 (closed form)
    assert s.loc['w', 'sensitivity_low'] == pytest.approx(0.4902, abs=1e-4) and s.loc['w', 'sensitivity_high'] == pytest.approx(0.9433, abs=1e-4)
    assert s.loc['p', 'p_vs_chance'] == pytest.approx(2 * 0.5 ** 20)


def test_turing_app_records_each_answer_and_resumes(tmp_path):
    feats = _feats()
    key = realism.turing_set(feats, 'a', 'b')
    views = [np.full((8, 8), i, np.uint8) for i in range(len(feats))]
    p = tmp_path / 'answers.csv'
    app = realism.TuringApp(key, views, p, reader='dr_a')
    assert app.image.value and key['item_id'][0] in app.text.value
    app.confidence.value = 5; app.answer('real'); app.answer('synthetic')
    a = realism.read_answers(p, key)
    assert a['item_id'].tolist() == key['item_id'][:2].tolist() and a['answer'].tolist() == ['real', 'synthetic']
    assert a['confidence'].tolist() == [5, 5]
    again = realism.TuringApp(key, views, p, reader='dr_a')                   # resumes at the third item
    assert again.todo[0] == key['item_id'][2] and len(again.todo) == len(key) - 2
    assert len(realism.TuringApp(key, views, p, reader='dr_b').todo) == len(key)   # another reader starts afresh
    with pytest.raises(realism.TuringInputError): again.answer('unsure')


def test_simulated_reader_at_chance_and_when_apart():
    same = _feats(40, 40, shift=0.0, seed=1)
    key = realism.turing_set(same, 'a', 'b')
    s = realism.score_reader(key, realism.simulated_reader(same, key, ['f', 'g'])).iloc[0]
    assert s['accuracy_low'] < 0.5 < s['accuracy_high']
    apart = _feats(40, 40, shift=8.0, seed=1)
    s = realism.score_reader(key, realism.simulated_reader(apart, key, ['f', 'g'])).iloc[0]
    assert s['accuracy'] == 1.0 and s['p_vs_chance'] < 1e-6
