"""Measurements and reports (chapters 20_measure, 21_report): accuracy against the phantom's recorded truth,
geometric property tests, the bad-input corpus, the LLM path with a tiny offline model, and the CLI end to end.

Expected values come from the phantom's truth (`case.meta['truth']`) or from geometry (a sphere of radius r),
never from the code under test."""
from __future__ import annotations

import json, math, re, shutil, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from abdomen_nb.core import CTCase, EmptyMaskError, GridMismatchError, MissingStructureError, write_case
from abdomen_nb.measure import (METADATA_COLUMNS, MeasurementWarning, axial_diameters, contact_angle, measure_case,
                                metadata_row, metadata_table, pancreas_parts_from_sma)
from abdomen_nb.report import (faithfulness, label_report, main_report, narrative_llm, narrative_rules, report,
                               structured_report, tiny_lm, STYLES)
from abdomen_nb.core import dice

phantom = pytest.importorskip('abdomen_nb.phantom')

PDAC_SMA = [{'organ': 'pancreas', 'type': 'pdac', 'diameter_mm': 30, 'contact': {'superior_mesenteric_artery': 200}},
            {'organ': 'liver', 'type': 'hcc', 'diameter_mm': 40}, {'organ': 'kidney', 'type': 'cyst', 'diameter_mm': 20}]


def _match(lesion, truth):
    "The truth lesion nearest to a measured lesion (by centre)."
    c = np.array(lesion['center_mm'])
    return min(truth['lesions'], key=lambda t: np.linalg.norm(np.array(t['center_mm']) - c))


@pytest.fixture(scope='module')
def pdac_case():
    case = phantom.make_case(1, tumors=PDAC_SMA, size=1.0)
    return case, measure_case(case)


# ---------------------------------------------------------------- accuracy against the phantom's truth

def test_lesion_geometry_matches_truth(pdac_case):
    case, m = pdac_case
    T = case.meta['truth']
    assert len(m['lesions']) == len(T['lesions']) == 3
    for l in m['lesions']:
        t = _match(l, T)
        assert np.linalg.norm(np.array(l['center_mm']) - t['center_mm']) < 3
        assert l['type'] == t['type']
        assert abs(l['longest_diameter_mm'] - t['longest_diameter_mm']) <= 2.0
        assert abs(l['perpendicular_diameter_mm'] - t['perpendicular_diameter_mm']) <= 2.0
        assert abs(l['volume_cm3'] - t['volume_cm3']) <= max(0.03 * t['volume_cm3'], 0.05)  # 0.05: the report's rounding
        assert l['attenuation'] == t['attenuation']
        assert l['subsegments'] == t['subsegments']
        if t['longest_diameter_mm'] >= 25:   # small lesions: partial volume with the organ (see the notebook)
            assert abs(l['mean_hu'] - t['mean_hu']) <= 5


def test_organ_volumes_and_flags_match_truth(pdac_case):
    case, m = pdac_case
    T = case.meta['truth']['organs']
    for o, d in m['organs'].items():
        assert abs(d['measured_volume_cm3'] - T[o]['volume_cm3']) <= 0.03 * T[o]['volume_cm3']
        assert d['touches_border'] == T[o]['touches_border']
        assert d['enlarged'] == (None if T[o]['touches_border'] else T[o]['enlarged'])
    for o in ('liver', 'spleen'):
        assert abs(m['organs'][o]['mean_hu'] - T[o]['mean_hu']) <= 5


def _stage_from_truth(t):
    "AJCC T stage and resectability from the phantom's truth, by the rules of reports.md (written out here)."
    a = t['vessel_contact_deg']
    sma, ca, cha = a.get('superior_mesenteric_artery', 0), a.get('celiac_trunk', 0), a.get('common_hepatic_artery', 0)
    pv = max(a.get('portal_vein_and_splenic_vein', 0), a.get('superior_mesenteric_vein', 0))
    ivc = a.get('postcava', 0)
    cm = t['longest_diameter_mm'] / 10
    stage = 'T4' if max(sma, ca, cha) >= 180 else 'T1c' if cm <= 2 else 'T2' if cm <= 4 else 'T3'
    head = 'pancreas_head' in t['subsegments']
    if sma == ca == cha == pv == 0: res = 'resectable'
    elif (head and (sma > 180 or ca > 0 or ivc > 0)) or (not head and (sma > 180 or ca > 180)): res = 'unresectable'
    elif pv == 0 and ca == 0 and sma < 180: res = 'borderline'
    else: res = 'indeterminate'
    return stage, res


def test_vessel_angle_stage_and_resectability_match_truth(pdac_case):
    case, m = pdac_case
    (l,) = [l for l in m['lesions'] if l['type'] == 'pdac']
    t = _match(l, case.meta['truth'])
    assert abs(l['vessel_contact_deg']['SMA'] - t['vessel_contact_deg']['superior_mesenteric_artery']) <= 20
    # Incidental contacts with neighbouring vessels are not compared: the phantom's truth counts only vessels
    # the tumor touches, RadGPT's 4 mm dilation also counts a vessel 3 mm away (e.g. the SMV: 0 vs 76 deg).
    # A vessel the truth says is touched must be found in contact, though.
    for v, deg in t['vessel_contact_deg'].items():
        if deg >= 30 and v != 'superior_mesenteric_artery':
            assert l['vessel_mask_contact_deg'].get(v, 0) > 0, v
    stage, res = _stage_from_truth(t)
    assert (l['t_stage'], l['resectability']) == (stage, res) == ('T4', 'unresectable')


def test_report_texts_on_the_phantom(pdac_case):
    case, m = pdac_case
    text = structured_report(m)
    assert text.startswith(f"CT {case.meta['phase'].title()} Phase") or text.startswith('Non-contrast CT')
    assert 'T4NxMx' in text and 'encasement' in text and 'Size: ' in text
    for seed in range(len(STYLES) * 2):
        f = faithfulness(narrative_rules(m, seed=seed), m)
        assert f['faithful'], (seed, f)
    assert label_report(text) == {'liver': 'yes', 'pancreas': 'yes', 'kidney': 'yes'}



@pytest.mark.parametrize('seed', [17, 22])
def test_organ_statement_after_a_lesion_is_not_read_as_its_location(seed):
    # the 'flowing' style puts "Enlarged left kidney." right after a pancreatic lesion in one paragraph;
    # these two phantoms once made the checker give the pancreatic lesion the kidney's side
    m = measure_case(phantom.make_case(seed, size='mini'))
    # the phantom now draws healthy kidneys in the normal range: mark them enlarged so the sentence is written
    for k in ('kidney_left', 'kidney_right'):
        if k in m['organs'] and m['organs'][k].get('volume_cm3') is not None: m['organs'][k]['enlarged'] = True
    text = narrative_rules(m, seed=seed, style='flowing')
    assert re.search(r'\(\d+\.\d x \d+\.\d cm\)[^.]*\. Enlarged (?:left|right) kidney\.', text), text[-300:]
    assert faithfulness(text, m)['faithful'], faithfulness(text, m)
    # the same sentence naming the lesion is still read as its location
    lied = text.replace('Enlarged left kidney.', 'It lies in the left kidney.').replace('Enlarged right kidney.', 'It lies in the right kidney.')
    assert any('location' in c for c in faithfulness(lied, m)['contradictions'])

def test_metadata_row(pdac_case):
    case, m = pdac_case
    row = metadata_row(m)
    assert list(row) == list(METADATA_COLUMNS) and len(row) >= 70
    assert row['pancreatic_t_stage'] == 'T4' and row['liver_hcc_count'] == 1 and row['kidney_cyst_count'] == 1
    assert row['total_lesion_count'] == 3 and row['sex'] == case.meta['sex']


def test_healthy_case_report():
    case = phantom.make_case(3, tumors='none', size='mini')
    r = report(case)
    assert r['measurements']['lesions'] == []
    assert 'No tumor is seen in the liver, pancreas or kidneys.' in r['structured']
    assert r['faithfulness']['faithful']
    assert label_report(r['structured']) == {'liver': 'no', 'pancreas': 'no', 'kidney': 'no'}


# ---------------------------------------------------------------- geometric property tests

def _ball(shape, centre, r):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((gi - c) ** 2 for gi, c in zip(g, centre)) <= r * r


@settings(max_examples=25, deadline=None)
@given(r=st.floats(3, 15), off=st.tuples(*[st.floats(-0.5, 0.5)] * 3))
def test_sphere_diameters_equal_2r(r, off):
    n = int(2 * r + 8)
    ball = _ball((n, n, n), [n / 2 + o for o in off], r)
    d = axial_diameters(ball)
    # voxel-centre distances of a small digital disc can fall a little over a voxel short (hypothesis:
    # r = 3.44 at a half-voxel offset measures 5.83 mm, 1.04 voxels short); from r = 5 mm on, within a voxel
    assert abs(d['longest_mm'] - 2 * r) <= (1.0 if r >= 5 else 1.5)
    # the perpendicular is measured across the (possibly diagonal) long axis of a digital disc: within a
    # voxel from r = 5 mm on; below that the digital disc is a polygon with a few pixels a side
    # The perpendicular is the width of the digital disc across its (often diagonal) long axis, measured on
    # voxel centres as RadGPT does: hypothesis found r = 5.56 at a half-voxel offset measuring 10.0 mm
    # (1.1 voxels short), so "within a voxel" is false for this estimator; it stays within 1.5 voxels.
    assert abs(d['perpendicular_mm'] - 2 * r) <= 1.5


@settings(max_examples=25, deadline=None)
@given(a=st.floats(6, 18), ratio=st.floats(0.6, 0.95), theta=st.floats(0, math.pi))
def test_rotation_does_not_change_the_longest_diameter(a, ratio, theta):
    n = int(2 * a + 8)
    g = np.mgrid[:n, :n, :3].astype(float) - np.array([n / 2, n / 2, 1])[:, None, None, None]
    def ell(t):
        u = g[0] * math.cos(t) + g[1] * math.sin(t); v = -g[0] * math.sin(t) + g[1] * math.cos(t)
        return (u / a) ** 2 + (v / (a * ratio)) ** 2 <= 1
    d0, d1 = axial_diameters(ell(0.0))['longest_mm'], axial_diameters(ell(theta))['longest_mm']
    # tumor-like ellipses (b/a >= 0.6; the phantom draws 0.7-0.95). Thin ones have a sharp digital tip that
    # can lose up to a voxel at each end, whatever the estimator that works on voxel centres; round ones
    # lose at most ~0.6 voxel an end.
    assert abs(d0 - d1) <= 1.5   # measured worst case 1.23 voxels (a = 6, b/a = 0.75, 86 degrees)


def _sphere_case(spacing, r=9.0):
    shape = tuple(int(round(70 / s)) for s in spacing)
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    X, Y, Z = (gi * s for gi, s in zip(g, spacing))
    liver = ((X - 35) / 30) ** 2 + ((Y - 35) / 30) ** 2 + ((Z - 35) / 30) ** 2 <= 1
    tumor = (X - 35) ** 2 + (Y - 35) ** 2 + (Z - 35) ** 2 <= r * r
    ct = np.where(tumor, 20, np.where(liver, 60, -100)).astype(np.float32)
    return CTCase(ct, np.diag([*spacing, 1.0]), {'liver': liver, 'liver_hcc': tumor}, {}, {'case_id': 's', 'phase': 'arterial'})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sp=st.tuples(st.floats(0.6, 1.6), st.floats(0.6, 1.6), st.floats(0.8, 3.0)))
def test_results_do_not_depend_on_spacing(sp):
    ref = measure_case(_sphere_case((1.0, 1.0, 1.0)))['lesions'][0]
    (l,) = measure_case(_sphere_case(sp))['lesions']
    assert abs(l['longest_diameter_mm'] - ref['longest_diameter_mm']) <= 2 * max(sp[:2]) + 0.5
    assert abs(l['volume_cm3'] - ref['volume_cm3']) <= 0.12 * ref['volume_cm3']
    assert l['attenuation'] == ref['attenuation'] == 'hypo'


def _wrap(deg, r_v=3.5):
    g = np.mgrid[:64, :64, :40].astype(float)
    rad = np.hypot(g[0] - 32, g[1] - 32); ang = np.degrees(np.arctan2(g[1] - 32, g[0] - 32))
    vessel = rad <= r_v
    tumor = (rad > r_v) & (rad <= r_v + 9) & (np.abs(ang) <= deg / 2) & (np.abs(g[2] - 20) <= 8)
    return tumor, vessel


@pytest.mark.parametrize('deg', [0, 60, 120, 200, 270, 360])
def test_contact_angle_of_a_wrapped_tube(deg):
    t, v = _wrap(deg) if deg else (_ball((64, 64, 40), (10, 10, 20), 5), _wrap(90)[1])
    # the ring is the voxel layer on the wall (one ring voxel ~13 degrees around a 3.5 mm vessel); the slices hold
    # the vessel's whole cross-section (a box cut at the tumor's side once read 60 degrees as 83)
    assert abs(contact_angle(t, v) - deg) <= 15


# ---------------------------------------------------------------- bad input

def _small_case(**kw):
    c = _sphere_case((1.0, 1.0, 1.0))
    for k, v in kw.items(): setattr(c, k, v)
    return c


def test_mask_on_another_grid_raises():
    c = _small_case(); c.masks['spleen'] = np.zeros((10, 10, 10), bool)
    with pytest.raises(GridMismatchError, match='spleen'):
        measure_case(c)


def test_tumor_outside_any_organ_is_measured_with_unknown_location():
    c = _small_case()
    c.masks['liver_hcc'] = _ball(c.shape, (5, 5, 5), 3)
    c.masks['liver'] = c.masks['liver'] & ~_ball(c.shape, (5, 5, 5), 6)
    with pytest.warns(MeasurementWarning, match='outside'):
        m = measure_case(c)
    assert m['lesions'][0]['location'] == 'unknown' and m['warnings']
    with pytest.raises(EmptyMaskError, match='outside'):
        measure_case(c, strict=True)


def test_missing_organ():
    c = _small_case(); del c.masks['liver']
    with pytest.warns(MeasurementWarning, match='no liver mask'):
        m = measure_case(c)
    assert m['lesions'][0]['attenuation'] == 'unknown' and 'liver' not in m['organs']
    assert 'Liver: not segmented.' in structured_report(m)
    with pytest.raises(MissingStructureError, match='liver'):
        measure_case(c, strict=True)


def test_empty_masks():
    c = _small_case(); c.masks['liver_hcc'] = np.zeros(c.shape, bool)
    m = measure_case(c)
    assert m['lesions'] == []
    with pytest.raises(EmptyMaskError):
        axial_diameters(np.zeros((5, 5, 5), bool))


def test_no_subsegment_map_gives_unknown_location(pdac_case):
    case, _ = pdac_case
    # no sub-segment maps and no SMA to derive the pancreas split from (with an SMA, see the next test)
    masks = {n: m for n, m in case.masks.items() if n != 'superior_mesenteric_artery'}
    c = CTCase(case.ct, case.affine, masks, {}, dict(case.meta))
    m = measure_case(c)
    assert {l['organ']: l['location'] for l in m['lesions'] if l['organ'] != 'kidney'} == {'liver': 'unknown', 'pancreas': 'unknown'}
    assert m['pancreas_split'] == 'unavailable'


def test_no_pancreas_map_is_derived_from_the_sma(pdac_case):
    case, m_given = pdac_case
    c = CTCase(case.ct, case.affine, dict(case.masks), {}, dict(case.meta))
    m = measure_case(c)
    assert (m_given['pancreas_split'], m['pancreas_split']) == ('given', 'derived from the SMA')
    (l,) = [l for l in m['lesions'] if l['organ'] == 'pancreas']
    assert l['subsegments'] == _match(l, case.meta['truth'])['subsegments']   # the PDAC straddles head and body
    assert l['resectability'] == 'unresectable' and l['t_stage'] == 'T4'
    assert [l['location'] for l in m['lesions'] if l['organ'] == 'liver'] == ['unknown']   # no liver segments: unknown


# ---------------------------------------------------------------- the pancreas split from the SMA (reports.md)

HEAD_PDAC = [{'organ': 'pancreas', 'type': 'pdac', 'diameter_mm': 20, 'location': 'pancreas_head'}]
SPLIT_SEEDS = range(40, 46)   # not among the 30 patients the notebook's figures come from


@pytest.fixture(scope='module')
def head_cases():
    return [phantom.make_case(s, tumors=HEAD_PDAC, size='mini') for s in SPLIT_SEEDS]


def test_pancreas_split_agrees_with_the_phantoms_map(head_cases, pdac_case):
    # measured over 30 mini phantom patients: head Dice 0.970-0.993 (median 0.989), body 0.889-0.969,
    # tail 0.934-0.980; 0.98 / 0.94 / 0.97 on the 1 mm case. The phantom cuts perpendicular to x, RadGPT's rule
    # perpendicular to the gland's principal axis: the residue is the wedge between the two cuts.
    for case in head_cases + [pdac_case[0]]:
        parts = pancreas_parts_from_sma(case.masks['pancreas'], case.masks['superior_mesenteric_artery'], case.spacing)
        own = case.labels['pancreas_parts']
        assert ((parts > 0) == case.masks['pancreas']).all()
        d = [dice(parts == k, own == k) for k in (1, 2, 3)]
        assert d[0] >= 0.95 and d[1] >= 0.85 and d[2] >= 0.9, (case.case_id, d)


def test_pancreas_head_is_on_the_patients_right(head_cases):
    case = head_cases[0]
    parts = pancreas_parts_from_sma(case.masks['pancreas'], case.masks['superior_mesenteric_artery'], case.spacing)
    x = lambda m: case.world(np.argwhere(m).mean(0))[0]
    assert x(case.masks['liver']) > x(case.masks['spleen'])            # RAS+: the patient's right is +x
    assert x(parts == 1) > x(parts == 2) > x(parts == 3)
    sma_at_pancreas = case.masks['superior_mesenteric_artery'] & parts.any(axis=(0, 1))[None, None, :]
    assert x(parts == 1) > x(sma_at_pancreas) > x(parts == 3)


def test_head_tumor_is_located_in_the_head_without_the_parts_map(head_cases):
    for case in head_cases:
        (t,) = case.meta['truth']['lesions']
        assert 'pancreas_head' in t['subsegments']
        keep = {n: m for n, m in case.masks.items() if not n.startswith(('liver', 'kidney'))}   # measure no more than needed
        c = CTCase(case.ct, case.affine, keep, {k: v for k, v in case.labels.items() if k != 'pancreas_parts'}, case.meta)
        m = measure_case(c)
        (l,) = m['lesions']
        assert m['pancreas_split'] == 'derived from the SMA'
        assert 'pancreas_head' in l['subsegments'], (case.case_id, l['location'], t['subsegments'])
        if t['subsegments'] == ['pancreas_head']: assert l['location'] == 'pancreatic head', case.case_id


def _pancreas_toy(affine=None, sma_z=(0, 70)):
    "A pancreas along x with a tumor at its right end and an SMA behind it (1 mm voxels)."
    g = np.ogrid[:100, :40, :70]
    panc = ((g[0] - 50) / 40.0) ** 2 + ((g[1] - 20) / 8.0) ** 2 + ((g[2] - 35) / 8.0) ** 2 <= 1
    tumor = panc & ((g[0] - 75) ** 2 + (g[1] - 20) ** 2 + (g[2] - 35) ** 2 <= 6 ** 2)
    sma = ((g[0] - 60) ** 2 + (g[1] - 12) ** 2 <= 9) & (g[2] >= sma_z[0]) & (g[2] < sma_z[1])
    sma = np.broadcast_to(sma, panc.shape).copy()
    panc &= ~sma
    ct = np.where(tumor, 20, np.where(panc, 90, -100)).astype(np.float32)
    return CTCase(ct, np.eye(4) if affine is None else affine, {'pancreas': panc | tumor, 'pancreatic_pdac': tumor,
                  'superior_mesenteric_artery': sma}, {}, {'case_id': 'toy', 'phase': 'venous'})


def test_pancreas_split_on_a_toy_and_its_failures():
    m = measure_case(_pancreas_toy())
    assert m['pancreas_split'] == 'derived from the SMA' and m['lesions'][0]['location'] == 'pancreatic head'
    # an SMA that never reaches the pancreas's slices: warned, location unknown; strict raises
    with pytest.warns(MeasurementWarning, match='SMA'):
        m = measure_case(_pancreas_toy(sma_z=(0, 10)))
    assert m['pancreas_split'] == 'unavailable' and m['lesions'][0]['location'] == 'unknown'
    with pytest.raises(MissingStructureError, match='SMA'):
        measure_case(_pancreas_toy(sma_z=(0, 10)), strict=True)
    with pytest.raises(MissingStructureError, match='SMA'):
        pancreas_parts_from_sma(_pancreas_toy(sma_z=(0, 10)).masks['pancreas'], np.zeros((100, 40, 70), bool), (1, 1, 1))
    with pytest.raises(EmptyMaskError):
        pancreas_parts_from_sma(np.zeros((5, 5, 5), bool), np.ones((5, 5, 5), bool), (1, 1, 1))
    # a grid that is not RAS+ (x runs to the patient's left): the side of the head is unknown, so no split
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.warns(MeasurementWarning, match='RAS'):
        m = measure_case(_pancreas_toy(affine=las))
    assert m['pancreas_split'] == 'unavailable' and m['lesions'][0]['location'] == 'unknown'


# ---------------------------------------------------------------- the LLM path (tiny random model, offline)

def test_llm_narrative_is_deterministic_and_checked(tmp_path, pdac_case):
    _, m = pdac_case
    path = tiny_lm(tmp_path / 'tiny')
    a = narrative_llm(m, str(path), max_new_tokens=40)
    assert a == narrative_llm(m, str(path), max_new_tokens=40)          # temperature 0 = greedy
    f = faithfulness(a, m)
    assert not f['faithful'] and f['dropped']                            # random weights: the check must say so


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('ds')
    for i, tumors in enumerate(['none', [{'organ': 'liver', 'type': 'cyst', 'diameter_mm': 25}]]):
        write_case(phantom.make_case(10 + i, tumors=tumors, size='mini', case_id=f'BDMAP_0000000{i + 1}'),
                   root / f'BDMAP_0000000{i + 1}')
    bad = root / 'BDMAP_00000003'; bad.mkdir()
    (bad / 'ct.nii.gz').write_bytes(b'not a nifti')
    return root


def test_cli_single_case(dataset, tmp_path, capsys):
    case_dir = dataset / 'BDMAP_00000002'
    out = tmp_path / 'rep'
    assert main_report([str(case_dir), '--out', str(out)]) == 0
    for f in ('report.txt', 'narrative.txt', 'report.json'): assert (out / f).exists()
    js = json.loads((out / 'report.json').read_text())
    assert js['faithfulness']['faithful'] and js['metadata']['liver_cyst_count'] == 1
    before = (out / 'report.txt').read_text()
    assert main_report([str(case_dir), '--out', str(out)]) == 1            # never overwrite silently
    assert 'overwrite' in capsys.readouterr().err
    assert main_report([str(case_dir), '--out', str(out), '--overwrite', '--narrative', 'none']) == 0
    assert (out / 'report.txt').read_text() == before
    # masks from another folder
    assert main_report([str(case_dir), '--masks', str(case_dir / 'segmentations'), '--out', str(tmp_path / 'r2')]) == 0


def test_cli_llm_narrative(dataset, tmp_path):
    path = tiny_lm(tmp_path / 'tiny')
    out = tmp_path / 'rep'
    assert main_report([str(dataset / 'BDMAP_00000001'), '--out', str(out), '--narrative', str(path),
                        '--max-new-tokens', '20']) == 0
    assert json.loads((out / 'report.json').read_text())['faithfulness']['faithful'] is False


def test_cli_dataset_records_failures_and_resumes(dataset, tmp_path, capsys):
    csv = tmp_path / 'meta.csv'
    assert main_report(['--dataset', str(dataset), '--csv', str(csv), '--out', str(tmp_path / 'reports')]) == 1
    t = pd.read_csv(csv)
    assert list(t.case_id) == ['BDMAP_00000001', 'BDMAP_00000002'] and list(t.columns) == list(METADATA_COLUMNS)
    man = pd.read_csv(tmp_path / 'meta.csv.parts' / 'manifest.csv')     # the shared batch runner's manifest
    assert list(man[man.status == 'failed'].case_id) == ['BDMAP_00000003']
    assert 'not a readable NIfTI' in man[man.status == 'failed'].error.iloc[0]
    stamp = (tmp_path / 'reports' / 'BDMAP_00000001' / 'report.json').stat().st_mtime_ns
    capsys.readouterr()
    assert main_report(['--dataset', str(dataset), '--csv', str(csv), '--out', str(tmp_path / 'reports')]) == 1
    assert '2 skipped' in capsys.readouterr().out
    assert (tmp_path / 'reports' / 'BDMAP_00000001' / 'report.json').stat().st_mtime_ns == stamp
    assert len(pd.read_csv(csv)) == 2


def test_metadata_table_from_a_folder(dataset, tmp_path):
    good = tmp_path / 'good'; good.mkdir()
    for c in ('BDMAP_00000001', 'BDMAP_00000002'): shutil.copytree(dataset / c, good / c)   # a link out would be refused
    t = metadata_table(good, progress=False)
    assert t.shape == (2, len(METADATA_COLUMNS)) and t.liver_lesion_count.tolist() == [0, 1]
