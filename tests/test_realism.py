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
