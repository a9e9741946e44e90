"""Chapter 44 (abdomen_nb.downstream): the data of the three arms, tumor-wise scoring with closed forms, and
the table's shape on a run of a few steps (the chapter itself runs the full comparison)."""
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from abdomen_nb import downstream as ds
from abdomen_nb.phantom import make_case


@pytest.fixture(scope='module')
def tumor_cases():
    return ds.cases_with_tumors(range(300, 340), 3)


def test_cases_with_tumors(tumor_cases):
    for c in tumor_cases:
        lab, n = ndimage.label(c.masks['liver_lesion'])
        assert n and np.bincount(lab.ravel())[1:].max() >= 8
    with pytest.raises(ValueError, match='pass more seeds'): ds.cases_with_tumors(range(300, 302), 5)


def test_tumor_scores_closed_forms(tumor_cases):
    pc, pt = ds.tumor_scores(tumor_cases, tumor_cases)
    n = np.array([c.masks['liver_lesion'].sum() for c in tumor_cases])
    assert np.allclose(pc['dsc'], 2 * n / (2 * n + 1)) and pt['detected'].all()      # Touchstone's +1
    assert (pt['small'] == (pt['diameter_mm'] < 20)).all()
    pc, pt = ds.tumor_scores([{}] * 3, tumor_cases)
    assert (pc['dsc'] == 0).all() and not pt['detected'].any()
    # two tumors, the prediction touches one voxel of the first: detected 1 of 2, DSC 2*1 / (1 + |G| + 1)
    c = tumor_cases[0]
    g = np.zeros(c.shape, bool); g[10:14, 10:14, 10:14] = True; g[30:33, 30:33, 30:33] = True
    case = type(c)(c.ct, c.affine, {'liver_lesion': g}, {}, {'case_id': 'two'})
    p = np.zeros(c.shape, bool); p[11, 11, 11] = True
    pc, pt = ds.tumor_scores([{'liver_lesion': p}], [case])
    assert pc['dsc'][0] == pytest.approx(2 / (1 + 64 + 27 + 1)) and pt['detected'].tolist() == [True, False]
    with pytest.raises(ValueError): ds.tumor_scores([{}], tumor_cases)                 # one prediction per case


def test_with_synthetic_tumors():
    healthy = [make_case(s, tumors='none') for s in (500, 501)]
    a = ds.with_synthetic_tumors(healthy, 'procedural', seed=3)
    b = ds.with_synthetic_tumors(healthy, 'procedural', seed=3)
    for h, x, y in zip(healthy, a, b):
        assert x.masks['liver_lesion'].any() and np.array_equal(x.ct, y.ct)
        assert x.meta['truth']['lesions'] and not h.meta['truth'].get('lesions')
        assert not (x.masks['liver_lesion'] & ~h.masks['liver']).any()
    with pytest.raises(ValueError, match='texts'): ds.with_synthetic_tumors(healthy, 'textomorph')
    with pytest.raises(ValueError, match='Unknown method'): ds.with_synthetic_tumors(healthy, 'difftumor')


def test_downstream_table_shape(tumor_cases):
    arms = {'real': tumor_cases[:2], 'real + procedural': tumor_cases[:2] + ds.with_synthetic_tumors(
        [make_case(500, tumors='none')], 'procedural')}
    runs = ds.downstream_table(arms, tumor_cases[2:], seeds=(0, 1), spacing=(3.5, 3.5, 4.0), iterations=2)
    assert runs[['arm', 'seed']].values.tolist() == [['real', 0], ['real', 1], ['real + procedural', 0], ['real + procedural', 1]]
    assert runs['train_cases'].tolist() == [2, 2, 3, 3]
    assert runs['dsc'].between(0, 1).all() and runs['sensitivity'].between(0, 1).all()
    assert all(list(s.index) == [c.case_id for c in tumor_cases[2:]] for s in runs['case_dsc'])
    assert np.allclose(runs['dsc'], [s.mean() for s in runs['case_dsc']])
