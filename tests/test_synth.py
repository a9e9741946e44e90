"""Chapter 40 (abdomen_nb.synth): procedural tumors, text -> attributes, synthesize, the synth command.

Checks against the phantom compare with the truth the phantom recorded (`case.meta['truth']`) or with
the input case itself (which voxels are organ, what the CT was before), never with the code under test.
"""
from __future__ import annotations

import json, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from abdomen_nb.core import CTCase, AbdomenNBError, MissingStructureError, OutputExistsError, read_case, write_case
from abdomen_nb.phantom import make_case
from abdomen_nb import synth
from abdomen_nb.synth import (TUMOR_TYPES, CONTRAST_HU, RandTumor, RandTumord, SynthesisError, TumorSpec,
                              insert_tumors, main_synth, parse_tumor_text, synthesize)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def healthy():
    return make_case(5, tumors='none')


@pytest.fixture(scope='module')
def box_case():
    "A 1 mm case whose 'liver' is a 180 mm cube of 60 HU: nothing clips the tumors."
    ct = np.full((200, 200, 200), -100.0, np.float32)
    liver = np.zeros(ct.shape, bool); liver[10:190, 10:190, 10:190] = True
    ct[liver] = 60.0
    return CTCase(ct, np.eye(4), {'liver': liver}, {}, {'case_id': 'box'})


def _rim(sigma_mm, spacing):
    "Voxels the 3-sigma truncated blur can reach, per axis."
    return [int(3.0 * sigma_mm / s + 0.5) for s in spacing]


# --- the recipe -------------------------------------------------------------------------------------

@pytest.mark.parametrize('organ,size_type,seed', [('liver', 'large', 0), ('liver', 'mix', 1), ('liver', 'tiny', 2),
                                                  ('pancreas', 'small', 3), ('kidney', 'medium', 4), ('kidney_left', 'small', 5)])
def test_inside_organ_and_label_is_the_changed_voxels(healthy, organ, size_type, seed):
    out = insert_tumors(healthy, organ, size_type, seed=seed)
    new = out.meta['truth']['lesions']
    organ_mask = healthy.masks[new[0]['organ']]
    union = {'liver': 'liver_lesion', 'pancreas': 'pancreatic_lesion'}.get(organ, 'kidney_lesion')
    lesion = out.masks[union]
    assert lesion.any() and not (lesion & ~organ_mask).any()              # inside the organ
    changed = out.ct != healthy.ct
    # the label equals the changed voxels, up to the blur rim: every label voxel changed, and every changed
    # voxel is an organ voxel within the truncated blur's reach (3 sigma, in voxels per axis) of the label
    assert not (lesion & ~changed).any()
    sig = max(l['recipe']['blur_sigma_mm'] for l in new)
    near = ndimage.binary_dilation(lesion, np.ones([2 * r + 1 for r in _rim(sig, healthy.spacing)], bool))
    assert not (changed & ~(near & organ_mask)).any()
    # instance label map and truth agree with the masks
    ids = [l['id'] for l in new]
    inst = out.labels['lesion_instances']
    assert np.array_equal(np.isin(inst, ids), lesion)
    for l in new:
        assert l['volume_cm3'] == pytest.approx((inst == l['id']).sum() * np.prod(healthy.spacing) / 1000, abs=1e-3)


@pytest.mark.parametrize('size_type', list(TUMOR_TYPES))
def test_size_classes_give_their_published_ranges(box_case, size_type):
    p = TUMOR_TYPES[size_type]
    r, smax = p['radius'], p['sigma'][1]
    diam, counts = [], []
    for seed in range(4):
        les = insert_tumors(box_case, 'liver', size_type, seed=seed).meta['truth']['lesions']
        counts.append(len(les))
        for l in les:
            radii = np.array(l['recipe']['radii_mm'])
            assert np.all((radii >= 0.75 * r - 1e-6) & (radii <= 1.25 * r + 1e-6))
            assert p['sigma'][0] <= l['recipe']['elastic_sigma_mm'] <= p['sigma'][1]
            diam.append(l['longest_diameter_mm'])
    assert all(p['count'][0] - 2 <= c <= p['count'][1] for c in counts)    # overlapping tiny tumors may merge
    diam = np.array(diam)
    # an undeformed ellipsoid spans 2 x 0.75 r .. 2 x 1.25 r; the elastic warp moves the edge by a few sigma
    assert 1.5 * r - 4 * smax <= np.median(diam) <= 2.5 * r + 4 * smax
    assert diam.max() <= 2.5 * r + 6 * smax + 2


def test_contrast_in_range_and_hypodense_by_default(box_case):
    for seed in range(5):
        out = insert_tumors(box_case, 'liver', 'medium', seed=seed)
        l = out.meta['truth']['lesions'][0]
        delta = l['recipe']['contrast_hu']
        assert CONTRAST_HU[0] <= delta <= CONTRAST_HU[1]
        drop = (box_case.ct - out.ct)[out.masks['liver_lesion']]
        assert drop.min() >= -1e-4 and drop.max() <= delta + 1e-3     # texture and blurred mask are in [0, 1]
        assert drop.mean() > 0.2 * delta
        assert all(x['attenuation'] == 'hypo' for x in out.meta['truth']['lesions'])


def test_same_seed_byte_identical(healthy):
    a = synthesize(healthy, 'two 2 cm heterogeneous lesions in the liver', seed=11)
    b = synthesize(healthy, 'two 2 cm heterogeneous lesions in the liver', seed=11)
    c = synthesize(healthy, 'two 2 cm heterogeneous lesions in the liver', seed=12)
    assert a.ct.tobytes() == b.ct.tobytes() and a.ct.tobytes() != c.ct.tobytes()
    assert all(a.masks[k].tobytes() == b.masks[k].tobytes() for k in a.masks)
    assert all(a.labels[k].tobytes() == b.labels[k].tobytes() for k in a.labels)
    assert json.dumps(a.meta['truth'], default=str) == json.dumps(b.meta['truth'], default=str)
    t = RandTumor('liver'); t.set_random_state(4); x = t(healthy)
    t.set_random_state(4); y = t(healthy)
    assert x.ct.tobytes() == y.ct.tobytes()


def test_input_is_not_modified(healthy):
    ct, masks = healthy.ct.copy(), {k: v.copy() for k, v in healthy.masks.items()}
    truth = json.dumps(healthy.meta['truth'], default=str)
    synthesize(healthy, 'a 3 cm hyperdense lesion in the liver', seed=0)
    assert np.array_equal(ct, healthy.ct) and set(masks) == set(healthy.masks)
    assert all(np.array_equal(masks[k], healthy.masks[k]) for k in masks)
    assert json.dumps(healthy.meta['truth'], default=str) == truth


def test_phantom_with_tumors_keeps_them():
    case = make_case(3)   # a pancreatic cyst already there
    old = case.meta['truth']['lesions']
    out = synthesize(case, 'a 2 cm lesion in the pancreatic tail', seed=1)
    assert out.meta['truth']['lesions'][:len(old)] == old
    assert not (out.masks['pancreatic_lesion'] & ~case.masks['pancreatic_lesion'] & case.masks['pancreatic_cyst']).any()
    assert (out.masks['pancreatic_cyst'] == case.masks['pancreatic_cyst']).all()
    assert out.meta['n_lesions'] == len(old) + 1


def test_full_resolution_phantom():
    case = make_case(5, hospital='riverside', size='full', tumors='none')   # 512 x 512 x 300 at 0.7 x 0.7 x 1 mm
    assert case.shape == (512, 512, 300)
    out = synthesize(case, 'a 3.5 cm ill-defined hypoattenuating mass in hepatic segment 8', seed=0)
    l = out.meta['truth']['lesions'][-1]
    assert abs(l['longest_diameter_mm'] - 35) <= 0.15 * 35
    assert 'liver_segment_8' in l['subsegments']
    assert not (out.masks['liver_lesion'] & ~case.masks['liver']).any()
    changed = out.ct != case.ct
    assert changed.sum() < 4 * out.masks['liver_lesion'].sum()
    assert out.ct.dtype == np.float32 and np.array_equal(out.ct, np.rint(out.ct))   # whole HU stay whole


def test_dictionary_transform(healthy):
    torch = pytest.importorskip('torch')
    from monai.data import MetaTensor
    lab = np.where(healthy.masks['liver'], 1, 0).astype(np.uint8)[None]
    d = {'image': MetaTensor(torch.as_tensor(healthy.ct[None]), affine=torch.as_tensor(healthy.affine)),
         'label': torch.as_tensor(lab)}
    t = RandTumord(size_type='medium'); t.set_random_state(0)
    r = t(d)
    tum = (r['label'][0] == 2).numpy()
    assert tum.any() and not (tum & (lab[0] == 0)).any()
    diff = (r['image'][0] != d['image'][0]).numpy()
    assert not (diff & (lab[0] == 0)).any()
    assert isinstance(r['image'], MetaTensor) and np.allclose(np.asarray(r['image'].affine), healthy.affine)


def test_options(healthy):
    plain = synthesize(healthy, 'a 4 cm lesion in the liver', seed=6)
    cap = synthesize(healthy, 'a 4 cm lesion in the liver', seed=6, capsule=True)
    assert cap.meta['truth']['lesions'][-1]['recipe']['capsule_hu'] is not None
    assert (cap.ct - plain.ct).max() > 5              # a bright band where the blurred mask is ~0.5
    mass = synthesize(healthy, 'a 4 cm lesion in the liver', seed=6, mass_effect=True)
    assert mass.meta['truth']['lesions'][-1]['recipe']['mass_effect'] is True
    assert not ((mass.ct != healthy.ct) & ~healthy.masks['liver']).any()
    vessels = [v for v in synth.VESSEL_NAMES if v in healthy.masks]
    for seed in range(4):
        out = insert_tumors(healthy, 'pancreas', 'medium', seed=seed, vessel_check=True)
        hit = any(l['recipe']['vessel_collision'] for l in out.meta['truth']['lesions'])
        overlap = any((out.masks['pancreatic_lesion'] & healthy.masks[v]).any() for v in vessels)
        assert hit or not overlap


# --- what a text names is what is drawn -------------------------------------------------------------

@pytest.mark.parametrize('text,organ,part', [
    ('a 2 cm hypodense lesion in hepatic segment 2', 'liver', 'liver_segment_2'),
    ('a 2.5 cm lesion in segment 6 of the liver', 'liver', 'liver_segment_6'),
    ('a 1.5 cm mass in the pancreatic tail', 'pancreas', 'pancreas_tail'),
    ('a 2 cm mass in the head of the pancreas', 'pancreas', 'pancreas_head'),
    ('a 2 cm renal cyst in the left kidney', 'kidney_left', 'kidney_left'),
    ('a 2.4 cm tumor in the right kidney', 'kidney_right', 'kidney_right'),
])
def test_text_location_and_size(healthy, text, organ, part):
    want = parse_tumor_text(text)[0].diameter_mm
    for seed in range(2):
        l = synthesize(healthy, text, seed=seed).meta['truth']['lesions'][-1]
        assert l['organ'] == organ and part in l['subsegments']
        assert abs(l['longest_diameter_mm'] - want) <= 0.15 * want, (l['longest_diameter_mm'], want)


def test_text_count_attenuation_boundary_texture(healthy):
    les = synthesize(healthy, 'three hyperattenuating lesions in the liver', seed=0).meta['truth']['lesions']
    assert len(les) == 3 and all(l['attenuation'] == 'hyper' and l['mean_hu'] > l['organ_mean_hu'] for l in les)
    hypo = synthesize(healthy, 'a 3 cm hypodense lesion in the liver', seed=0).meta['truth']['lesions'][-1]
    assert hypo['mean_hu'] < hypo['organ_mean_hu']
    well = synthesize(healthy, 'a 3 cm well-defined lesion in the liver', seed=0).meta['truth']['lesions'][-1]
    ill = synthesize(healthy, 'a 3 cm ill-defined lesion in the liver', seed=0).meta['truth']['lesions'][-1]
    assert well['recipe']['blur_sigma_mm'] <= 1.0 < 2.5 <= ill['recipe']['blur_sigma_mm']
    box = CTCase(np.full((120, 120, 120), 60.0, np.float32), np.eye(4), {'liver': np.ones((120,) * 3, bool)})
    sd = {}
    for tex in ('homogeneous', 'heterogeneous'):
        vals = []
        for s in range(4):   # internal standard deviation: the tumor core, 4 mm in from the blurred edge
            out = synthesize(box, f'a 4 cm {tex} well-defined hypodense lesion in the liver', seed=s)
            core = ndimage.binary_erosion(out.masks['liver_lesion'], iterations=4)
            vals.append(out.ct[core].std())
        sd[tex] = np.mean(vals)
    assert sd['heterogeneous'] > 2 * sd['homogeneous'], sd
    cyst = synthesize(healthy, 'a 2 cm cyst in the liver', seed=0).meta['truth']['lesions'][-1]
    assert cyst['type'] == 'cyst' and cyst['mask'] == 'liver_cyst' and cyst['mean_hu'] < 45


# --- the parser: a fixed table ----------------------------------------------------------------------

PARSE_TABLE = [  # text -> expected named attributes of the first spec (only the keys listed are checked)
    ('a 2.3 cm well-defined hypoattenuating cyst in hepatic segment 7',
     dict(organ='liver', location=['liver_segment_7'], diameter_mm=23.0, boundary='well-defined', attenuation='hypo', pathology='cyst', count=1)),
    ('ill-defined heterogeneous mass in the pancreatic head abutting the SMA',
     dict(organ='pancreas', location=['pancreas_head'], boundary='ill-defined', texture='heterogeneous', vessels=['SMA'])),
    ('no focal liver lesion', dict(organ='liver', negated=True)),
    ('No focal lesion is seen in the left kidney.', dict(organ='kidney', location=['kidney_left'], negated=True)),
    ('The pancreas is unremarkable.', dict(organ='pancreas', negated=True)),
    ('No evidence of pancreatic mass.', dict(organ='pancreas', negated=True)),
    ('The liver is free of lesions.', dict(organ='liver', negated=True)),
    ('A 15 mm hypodense lesion in segment 4 of the liver.', dict(organ='liver', location=['liver_segment_4'], diameter_mm=15.0, attenuation='hypo')),
    ('Hyperdense lesion in segments 7/8 measuring 3.1 x 2.2 cm.', dict(location=['liver_segment_7', 'liver_segment_8'], diameter_mm=31.0, attenuation='hyper')),
    ('A 4 cm mass in segment VI of the liver.', dict(organ='liver', location=['liver_segment_6'], diameter_mm=40.0)),
    ('Two hypoattenuating lesions in the right hepatic lobe.', dict(organ='liver', count=2, attenuation='hypo')),
    ('Multiple hepatic metastases.', dict(organ='liver', pathology='metastasis', count=None)),
    ('Three small cysts in the liver.', dict(organ='liver', count=3, pathology='cyst', size_type='small')),
    ('A tiny hypodense focus in the liver too small to characterize, likely a cyst.', dict(organ='liver', pathology='cyst')),
    ('A large heterogeneous hepatocellular carcinoma in the right lobe with arterial enhancement and washout.',
     dict(organ='liver', pathology='hcc', texture='heterogeneous', enhancement='arterial', size_type='large')),
    ('HCC with washout in hepatic segment 8.', dict(pathology='hcc', enhancement='washout', location=['liver_segment_8'])),
    ('A 2 cm hemangioma with peripheral nodular enhancement in the liver.', dict(pathology='hemangioma', diameter_mm=20.0)),
    ('A rim-enhancing lesion in the liver.', dict(organ='liver', enhancement='rim')),
    ('A non-enhancing hypodense lesion in the liver.', dict(organ='liver', enhancement='none', attenuation='hypo')),
    ('Isoattenuating lesion in the pancreatic body.', dict(organ='pancreas', location=['pancreas_body'], attenuation='iso')),
    ('A 3.3 x 2.4 cm pancreatic ductal adenocarcinoma (PDAC) in the pancreatic head.',
     dict(organ='pancreas', pathology='pdac', diameter_mm=33.0, location=['pancreas_head'])),
    ('A hypervascular pancreatic neuroendocrine tumor in the tail of the pancreas.',
     dict(organ='pancreas', pathology='pnet', enhancement='arterial', location=['pancreas_tail'])),
    ('Cystic lesion in the uncinate process of the pancreas.', dict(organ='pancreas', location=['pancreas_head'], pathology='cyst')),
    ('An infiltrative mass in the pancreatic body encasing the celiac trunk.', dict(boundary='ill-defined', vessels=['CA'], location=['pancreas_body'])),
    ('Hypoenhancing pancreatic mass abutting the SMV.', dict(organ='pancreas', attenuation='hypo', vessels=['SMV'])),
    ('A 2 cm renal cyst in the right kidney.', dict(organ='kidney', location=['kidney_right'], pathology='cyst', diameter_mm=20.0)),
    ('A 4.5 cm heterogeneous enhancing mass arising from the left kidney.', dict(organ='kidney', location=['kidney_left'], pathology='tumor', texture='heterogeneous', diameter_mm=45.0)),
    ('Renal cell carcinoma in the left renal upper pole.', dict(organ='kidney', location=['kidney_left'], pathology='tumor')),
    ('Well-circumscribed homogeneous lesion in the right kidney, 12 mm.', dict(boundary='well-defined', texture='homogeneous', diameter_mm=12.0)),
    ('A sharply marginated hyperdense lesion in the liver.', dict(boundary='well-defined', attenuation='hyper')),
    ('A poorly defined low-density mass in the liver.', dict(boundary='ill-defined', attenuation='hypo')),
    ('A mottled mass in the liver.', dict(texture='heterogeneous')),
    ('A 1.2 cm uniformly hypodense nodule in the liver.', dict(texture='homogeneous', attenuation='hypo', diameter_mm=12.0)),
    ('A caudate lobe lesion.', dict(location=['liver_segment_1'])),
    ('Liver: normal in size. No lesions.', dict(organ='liver', negated=True)),
    ('Right kidney: normal in size.\n  No lesions.', dict(organ='kidney', location=['kidney_right'], negated=True)),
    ('No tumor is seen in the liver, pancreas or kidneys.', dict(organ='liver', negated=True)),
    ('A 2 cm hypointense lesion in the liver.', dict(attenuation='hypo')),            # the encoder's word
    ('A 3 cm lesion with blurry margins in the liver.', dict(boundary='ill-defined')),  # the encoder's phrase
    ('A 2 cm fluid lesion in the liver.', dict(pathology='cyst')),                      # the encoder's word
    ('A 5 cm secondary deposit in the liver.', dict(organ='liver', diameter_mm=50.0)),
    ('Subcentimeter hypodense lesion in hepatic segment 3.', dict(size_type='tiny', location=['liver_segment_3'])),
]


def test_parser_table():
    assert len(PARSE_TABLE) >= 40
    bad = []
    for text, want in PARSE_TABLE:
        specs = parse_tumor_text(text)
        got = specs[0].to_json() if specs else {}
        for k, v in want.items():
            if got.get(k) != v: bad.append((text, k, got.get(k), v))
    assert not bad, '\n'.join(map(str, bad))


def test_parser_negations_and_multiple_organs():
    specs = parse_tumor_text('No tumor is seen in the liver, pancreas or kidneys.')
    assert [(s.organ, s.negated) for s in specs] == [('liver', True), ('pancreas', True), ('kidney', True)]
    specs = parse_tumor_text('No liver lesion. A 2 cm cyst in the right kidney.')
    assert [(s.organ, s.negated) for s in specs] == [('kidney', False), ('liver', True)]
    assert parse_tumor_text('The spleen is normal in size.') == []
    with pytest.raises(SynthesisError): parse_tumor_text(None)


# --- the report round trip ---------------------------------------------------------------------------

def _agreement(specs, lesions):
    "Per organ count agreement, then per tumor (matched by sorted diameter within the organ) size / location / attenuation."
    from itertools import permutations
    group = lambda o: 'kidney' if o.startswith('kidney') else o
    res = {'count': [], 'size': [], 'location': [], 'attenuation': []}
    pos = [s for s in specs if not s.negated]
    for g in ('liver', 'pancreas', 'kidney'):
        P = [s for s in pos if s.organ == g]
        T = [l for l in lesions if group(l['organ']) == g]
        res['count'].append(len(P) == len(T))
        if not P or not T: continue
        def cost(perm):   # brute force over pairings (at most 3 tumors an organ)
            return sum(abs((P[i].diameter_mm or 0) - T[j]['longest_diameter_mm']) / T[j]['longest_diameter_mm']
                       + (set(P[i].location) != set(T[j]['subsegments'])) for i, j in perm)
        n = min(len(P), len(T))
        best = min((list(zip(pi, tj)) for pi in permutations(range(len(P)), n) for tj in [tuple(range(len(T)))[:n]]
                    for _ in [0]), key=cost) if len(P) <= len(T) else \
               min((list(zip(range(len(P))[:n], tj)) for tj in permutations(range(len(T)), n)), key=cost)
        for i, j in best:
            p, l = P[i], T[j]
            res['size'].append(p.diameter_mm is not None and abs(p.diameter_mm - l['longest_diameter_mm']) <= 0.15 * l['longest_diameter_mm'])
            res['location'].append(set(p.location) == set(l['subsegments']))
            res['attenuation'].append(p.attenuation == l['attenuation'])
    return res


def test_report_round_trip():
    from abdomen_nb.measure import measure_case
    from abdomen_nb.report import structured_report, narrative_rules
    vs_m, vs_t = {}, {}
    for seed in range(200, 224):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); case = make_case(seed); m = measure_case(case)
        measured = [dict(l, organ=l['organ_mask'] or l['organ']) for l in m['lesions']]
        for text in (structured_report(m), narrative_rules(m, seed=seed)):
            specs = parse_tumor_text(text, encoder=False)
            for acc, ref in ((vs_m, measured), (vs_t, case.meta['truth']['lesions'])):
                for k, v in _agreement(specs, ref).items(): acc.setdefault(k, []).extend(v)
    rate = lambda acc: {k: round(float(np.mean(v)), 3) for k, v in acc.items()}
    print('\nround trip over 24 phantom cases (48 reports): vs measurements', rate(vs_m), '| vs phantom truth', rate(vs_t),
          '| tumors matched:', len(vs_t['size']))
    assert all(v == 1.0 for v in rate(vs_m).values())       # the parser reads back what the text says
    r = rate(vs_t)                                            # the whole chain masks -> text -> parser
    assert r['count'] >= 0.95 and r['location'] >= 0.95 and r['size'] >= 0.85 and r['attenuation'] >= 0.85


# --- the command line --------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def case_dir(tmp_path_factory, healthy):
    d = tmp_path_factory.mktemp('synth') / 'BDMAP_00000005'
    write_case(healthy, d)
    (d / 'truth.json').write_text(json.dumps(healthy.meta['truth']))
    return d


def _snapshot(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in Path(d).rglob('*'))


def _cli(*args):
    return subprocess.run([sys.executable, '-c', 'import sys; from abdomen_nb.synth import main_synth; '
                           'from abdomen_nb.core import AbdomenNBError\n'
                           'try: sys.exit(main_synth(sys.argv[1:]))\n'
                           'except AbdomenNBError as e: print(type(e).__name__ + ": " + str(e), file=sys.stderr); sys.exit(1)',
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_insert_end_to_end(case_dir, tmp_path):
    before = _snapshot(case_dir)
    out = tmp_path / 'BDMAP_90000001'
    r = _cli('insert', str(case_dir), '--text', 'a 2.5 cm hypodense cyst in hepatic segment 6', '--out', str(out), '--seed', '3')
    assert r.returncode == 0, r.stderr
    assert '1 tumor(s) inserted' in r.stdout
    assert _snapshot(case_dir) == before                      # the input is untouched
    new = read_case(out)
    l = new.meta['truth']['lesions'][-1]
    assert l['type'] == 'cyst' and 'liver_segment_6' in l['subsegments'] and abs(l['longest_diameter_mm'] - 25) <= 3.75
    assert new.masks['liver_cyst'].any() and (new.masks['liver_lesion'] == new.masks['liver_cyst']).all()
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['healthy'] is False and meta['synthesized_from'] == 'BDMAP_00000005' and meta['synthesis'][-1]['seed'] == 3
    assert json.loads((out / 'truth.json').read_text())['lesions'][-1]['id'] == l['id']
    old = read_case(case_dir)
    changed = new.ct != old.ct
    assert changed.any() and not (changed & ~old.masks['liver']).any()
    # same command, same seed -> same CT
    r2 = _cli('insert', str(case_dir), '--text', 'a 2.5 cm hypodense cyst in hepatic segment 6', '--out', str(tmp_path / 'again'), '--seed', '3')
    assert r2.returncode == 0 and np.array_equal(read_case(tmp_path / 'again').ct, new.ct)


def test_cli_parse_json():
    r = _cli('parse', 'ill-defined heterogeneous mass in the pancreatic head abutting the SMA', '--json')
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got[0]['organ'] == 'pancreas' and got[0]['location'] == ['pancreas_head'] and got[0]['vessels'] == ['SMA']


@pytest.mark.parametrize('text,expect', [('a 2 cm hypodense lesion', 'names no organ'),
                                         ('no focal liver lesion', 'no tumor'),
                                         ('a 2 cm mass in the spleen', 'not')])
def test_cli_bad_text_writes_nothing(case_dir, tmp_path, text, expect):
    out = tmp_path / 'out'
    r = _cli('insert', str(case_dir), '--text', text, '--out', str(out))
    assert r.returncode == 1 and expect in r.stderr and 'SynthesisError' in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_organ_the_case_lacks(tmp_path, healthy):
    d = tmp_path / 'nokidney'
    write_case(CTCase(healthy.ct, healthy.affine, {k: v for k, v in healthy.masks.items() if not k.startswith('kidney')}), d)
    before = _snapshot(d)
    r = _cli('insert', str(d), '--text', 'a 2 cm cyst in the left kidney', '--out', str(tmp_path / 'out'))
    assert r.returncode == 1 and 'MissingStructureError' in r.stderr and 'kidney_left' in r.stderr
    assert not (tmp_path / 'out').exists() and _snapshot(d) == before
    with pytest.raises(MissingStructureError):
        synthesize(read_case(d), 'a 2 cm lesion in the kidney')


def test_cli_refuses_to_overwrite(case_dir, tmp_path):
    out = tmp_path / 'x'; out.mkdir(); (out / 'keep.txt').write_text('mine')
    r = _cli('insert', str(case_dir), '--text', 'a 2 cm lesion in the liver', '--out', str(out))
    assert r.returncode == 1 and 'OutputExistsError' in r.stderr and (out / 'keep.txt').read_text() == 'mine'
    r = _cli('insert', str(case_dir), '--text', 'a 2 cm lesion in the liver', '--out', str(case_dir / 'inside'))
    assert r.returncode == 1 and 'OutputExistsError' in r.stderr and not (case_dir / 'inside').exists()


def test_insert_case_copies_what_it_did_not_change(case_dir, tmp_path):
    "Unchanged masks / label maps are copied byte for byte; what changed equals the in-memory synthesis."
    text = 'a 3 cm hypodense mass in hepatic segment 7'
    out, added = synth.insert_case(case_dir, text, tmp_path / 'new', seed=2)
    case = read_case(case_dir)
    assert case.ct.flags['F_CONTIGUOUS']                       # NIfTI order ...
    mem = synthesize(case, text, seed=2)
    assert mem.ct.flags['F_CONTIGUOUS']                        # ... kept by the copy (a C-order copy is ~30x slower)
    new = read_case(out)
    np.testing.assert_array_equal(new.ct, mem.ct)
    changed = {'liver_lesion', 'lesion_instances'}
    for sub in ('segmentations', 'labels'):
        for f in (case_dir / sub).iterdir():
            name = f.name.split('.')[0]
            assert ((out / sub / f.name).read_bytes() == f.read_bytes()) == (name not in changed), f.name
    assert (out / 'combined_labels.nii.gz').read_bytes() == (case_dir / 'combined_labels.nii.gz').read_bytes()
    for n in mem.masks: np.testing.assert_array_equal(new.masks[n], mem.masks[n], err_msg=n)
    for n in mem.labels: np.testing.assert_array_equal(new.labels[n], mem.labels[n], err_msg=n)
    assert added[0]['id'] == mem.meta['truth']['lesions'][-1]['id']


def test_write_case_skip(tmp_path, healthy):
    d = write_case(healthy, tmp_path / 'c', skip={'liver', 'liver_segments'})
    assert not (d / 'segmentations' / 'liver.nii.gz').exists() and not (d / 'labels' / 'liver_segments.nii.gz').exists()
    assert (d / 'segmentations' / 'spleen.nii.gz').exists() and (d / 'labels' / 'pancreas_parts.nii.gz').exists()
    assert 'liver' in healthy.masks                            # the case itself is left alone
