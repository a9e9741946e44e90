"""Segmentation (chapter 10, `seg`) and Touchstone scoring (chapter 11, `touchstone`).

Metric values are checked against closed forms on hand-made cubes and against MONAI / a brute-force
surface distance; statistics on constructed score tables; the trained model against the phantom's
recorded masks; the grid round trip on an LPS-stored case with an oracle network whose answer is known;
the two commands end to end; and `torchrun` with 2 CPU processes on Gloo.
"""
from __future__ import annotations

import csv, os, shutil, subprocess, sys, warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from abdomen_nb import core, seg, touchstone as ts
from abdomen_nb.core import CTCase, read_case, write_case, AtlasDataset
from abdomen_nb.phantom import make_case, make_cohort

torch.set_num_threads(1)   # 2 shared cores: one thread per process is fastest
warnings.filterwarnings('ignore', category=FutureWarning)
ROOT = Path(__file__).resolve().parents[1]


def cube(lo, side=10, shape=(40, 40, 40)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + side) for a in lo)] = True
    return m


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize('offset', [(0, 0, 0), (2, 0, 0), (0, 3, 0), (1, 1, 1), (4, 0, 5), (10, 0, 0)])
def test_dsc_of_offset_cubes_is_the_closed_form_and_agrees_with_monai(offset):
    from monai.metrics import DiceMetric
    a, b = cube((10, 10, 10)), cube(np.add((10, 10, 10), offset))
    inter = np.prod([max(0, 10 - o) for o in offset])
    assert ts.dsc(a, b) == pytest.approx(2 * inter / (1000 + 1000 + 1))
    monai = float(DiceMetric(include_background=True)(torch.from_numpy(b)[None, None].float(),
                                                      torch.from_numpy(a)[None, None].float()))
    assert monai == pytest.approx(2 * inter / 2000)          # MONAI: no +1
    assert ts.dsc(a, b) == pytest.approx(monai * 2000 / 2001)


def test_empty_vs_empty_is_zero_and_absent_truth_is_nan():
    z = np.zeros((6, 6, 6), bool)
    assert ts.dsc(z, z) == 0.0
    assert ts.dsc(cube((1, 1, 1), 2, (6, 6, 6)), z) == 0.0
    truth = {'liver': z, 'spleen': cube((1, 1, 1), 3, (6, 6, 6))}
    sc = ts.score_case({'liver': z}, truth, (1, 1, 1), classes=['liver', 'spleen', 'aorta'], missing='zero')
    assert np.isnan(sc['dsc']['liver']) and np.isnan(sc['nsd']['liver'])   # empty truth: NaN
    assert sc['dsc']['spleen'] == 0.0 and sc['nsd']['spleen'] == 0.0       # missing prediction, missing='zero': 0
    assert np.isnan(sc['dsc']['aorta'])                                      # no truth mask: NaN
    with pytest.raises(core.MissingStructureError, match='spleen'):        # default 'drop': an error for the case
        ts.score_case({'liver': z}, truth, (1, 1, 1), classes=['liver', 'spleen', 'aorta'])


def brute_nsd(p, g, spacing, tol):
    "Surface Dice from scratch: edge voxels (mask minus its erosion), nearest-edge distances in mm."
    ep, eg = p & ~ndimage.binary_erosion(p), g & ~ndimage.binary_erosion(g)
    P, G = np.argwhere(ep) * spacing, np.argwhere(eg) * spacing
    dp, dg = cKDTree(G).query(P)[0], cKDTree(P).query(G)[0]
    return ((dp <= tol).sum() + (dg <= tol).sum()) / (len(P) + len(G))


def test_nsd_depends_on_the_real_spacing():
    a, b = cube((10, 10, 10)), cube((11, 10, 10))          # one voxel along x
    assert ts.nsd(b, a, (1, 1, 1)) == 1.0                   # 1 mm <= 1.5 mm
    assert ts.nsd(b, a, (2, 2, 2)) < 1.0                    # 2 mm > 1.5 mm
    for sp in [(2, 2, 2), (1.6, 0.7, 3.0), (0.5, 0.5, 0.5)]:
        assert ts.nsd(b, a, sp) == pytest.approx(brute_nsd(b, a, np.array(sp), 1.5))
    # anisotropic voxels: the same one-voxel shift is within tolerance along a 1 mm axis, not along a 3 mm axis
    assert ts.nsd(cube((11, 10, 10)), a, (1, 1, 3)) == 1.0
    assert ts.nsd(cube((10, 10, 11)), a, (1, 1, 3)) < 1.0
    # a larger tolerance forgives more
    assert ts.nsd(b, a, (2, 2, 2), tolerance=2.0) == 1.0


# -------------------------------------------------------------------------------------------- statistics
def table(values, classes=('liver', 'spleen', 'aorta')):
    return pd.DataFrame({'name': [f'BDMAP_{i:08d}' for i in range(len(values))],
                         **{c: values[:, j] for j, c in enumerate(classes)}})


def test_a_model_better_on_every_case_ranks_first_and_is_significant_identical_ones_are_not():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.9, (25, 3))
    models = {'base': table(base), 'better': table(base + rng.uniform(0.005, 0.03, (25, 1))), 'copy': table(base.copy())}
    r = ts.rank_models(models)
    assert r['model'].iloc[0] == 'better' and r['rank'].iloc[0] == 1
    P = ts.pairwise_tests(models)
    assert P.loc['better', 'base'] < 0.05 and P.loc['better', 'copy'] < 0.05
    assert P.loc['base', 'better'] > 0.5
    assert P.loc['base', 'copy'] == 1.0 and P.loc['copy', 'base'] == 1.0
    # Holm: the smallest raw p times the number of tests (6 ordered pairs)
    from scipy import stats
    raw = stats.wilcoxon(ts.case_means(models['better']), ts.case_means(models['base']), alternative='greater').pvalue
    assert P.loc['better', 'base'] == pytest.approx(min(1, 6 * raw))


def test_holm_matches_the_textbook_example():
    # step-down: sorted p * (m, m-1, ...), running maximum, capped at 1
    assert ts.holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_subgroups_drop_small_groups_and_find_a_real_difference():
    rng = np.random.default_rng(0)
    ids = [f'c{i}' for i in range(33)]
    hosp = ['a'] * 12 + ['b'] * 12 + ['c'] * 6 + ['d'] * 3
    score = pd.Series(np.r_[rng.normal(0.9, 0.01, 12), rng.normal(0.7, 0.01, 12), rng.normal(0.9, 0.01, 9)], index=ids)
    kw, mw = ts.subgroup_analysis(score, pd.DataFrame({'case_id': ids, 'hospital': hosp}), by=['hospital'])
    row = kw.iloc[0]
    assert row['groups'] == 3 and row['dropped'] == 'd' and row['p'] < 0.001
    sig = {(r.group_a, r.group_b): r.significant for r in mw.itertuples()}
    assert sig[('a', 'b')] and sig[('b', 'c')] and not sig[('a', 'c')]
    from scipy import stats
    assert mw['p_bh'].tolist() == pytest.approx(stats.false_discovery_control(mw['p'].values).tolist())


# -------------------------------------------------------------------------- phantoms, training, commands
@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    "Mini phantoms: 6 train + 1 val from two hospitals, 3 held-out test cases from the same two and 2 from another."
    root = tmp_path_factory.mktemp('cohort')
    cases = {}
    for i, (seed, hosp) in enumerate([(s, h) for s, h in zip(range(100, 110), ['northgate', 'riverside'] * 5)]
                                     + [(200, 'highland'), (201, 'highland')]):
        c = make_case(seed, hospital=hosp, size='mini', case_id=f'BDMAP_{i + 1:08d}')
        write_case(c, root / c.case_id)
        cases[c.case_id] = hosp
    return root, sorted(cases)


@pytest.fixture(scope='module')
def trained(cohort, tmp_path_factory):
    root, ids = cohort
    out = tmp_path_factory.mktemp('ckpt')
    cfg = seg.seg_config('tiny', iterations=150, val_every=75, seed=0)
    model = seg.train(cfg, [root / c for c in ids[:6]], [root / ids[6]], out_dir=out, progress=False)
    return model, out


def test_tiny_unet_beats_chance_clearly_on_held_out_phantoms(cohort, trained):
    root, ids = cohort
    model, _ = trained
    scores, chance = [], []
    for cid in ids[7:]:
        truth = read_case(root / cid)
        pred = seg.predict(truth, model)
        sc = ts.score_case(pred.masks, truth.masks, truth.spacing)
        scores.append(np.nanmean(list(sc['dsc'].values())))
        # chance: a random mask with the organ's own voxel fraction has expected Dice ~ that fraction
        chance.append(np.mean([truth.masks[c].mean() for c in core.TOUCHSTONE_CLASSES]))
    mean, ch = float(np.mean(scores)), float(np.mean(chance))
    print(f"\ntiny U-Net, 150 steps: mean DSC on {len(scores)} held-out phantoms {mean:.3f} (chance ~{ch:.3f})")
    assert mean > 0.2 and mean > 5 * ch


class Oracle(torch.nn.Module):
    "A 'network' that knows the answer: channel i is positive where the windowed image lies in band i."
    def __init__(self, cfg, bands):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.bands, self.seg_config = bands, cfg
    def forward(self, x):
        return torch.cat([40 * torch.minimum(x - lo, hi - x) for lo, hi in self.bands], 1) + self.w


def lps_case_dir(root, shape=(40, 34, 24), spacing=(1.5, 1.5, 2.5)):
    "Two organs of distinct HU on a noiseless grid, stored LPS."
    ras = np.diag([*spacing, 1.0]); ras[:3, 3] = (-20, 10, -40)
    g = np.indices(shape)
    liver = ((g[0] - 13) ** 2 / 81 + (g[1] - 15) ** 2 / 100 + (g[2] - 11) ** 2 / 36) <= 1
    spleen = ((g[0] - 30) ** 2 / 36 + (g[1] - 14) ** 2 / 49 + (g[2] - 12) ** 2 / 16) <= 1
    ct = np.full(shape, -80.0, np.float32); ct[liver] = 60; ct[spleen] = 240
    flip = np.array([[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    case = CTCase(ct, ras, {'liver': liver, 'spleen': spleen}, meta={'case_id': 'BDMAP_00000042', 'source_affine': ras @ flip})
    return write_case(case, Path(root) / 'BDMAP_00000042')


@pytest.mark.parametrize('model_spacing', ['same', 'coarser'])
def test_predictions_land_on_the_original_grid_of_an_lps_case(tmp_path, model_spacing):
    d = lps_case_dir(tmp_path)
    case = read_case(d)
    assert core.orientation(case.meta['source_affine']) == 'LPS'
    sp = case.spacing if model_spacing == 'same' else (3.0, 3.0, 3.0)
    cfg = seg.seg_config('tiny', classes=['liver', 'spleen'], spacing=tuple(sp), roi=(16, 16, 16))
    w = lambda hu: (hu - cfg.window[0]) / (cfg.window[1] - cfg.window[0])
    # each band starts half-way between the organ and its darker neighbour (the 0.5 level of a linearly resampled edge)
    oracle = Oracle(cfg, [(w(-10), w(150)), (w(80), 2.0)])
    # the largest component drops the rim of 'liver' that a blurred spleen edge produces at coarse spacing
    paths = seg.write_predictions(seg.predict(case, oracle, postprocess=model_spacing != 'same'), d)
    ct_img = nib.load(d / 'ct.nii.gz')
    for name, p in zip(['liver', 'spleen'], paths):
        img = nib.load(p)
        assert img.shape == ct_img.shape and np.allclose(img.affine, ct_img.affine)
        pred, truth = np.asarray(img.dataobj).astype(bool), np.asarray(nib.load(d / 'segmentations' / f'{name}.nii.gz').dataobj).astype(bool)
        if model_spacing == 'same':
            assert np.array_equal(pred, truth)                       # voxel-exact
        else:
            assert ts.dsc(pred, truth) > 0.9
            shift = np.abs(ndimage.center_of_mass(pred) - np.array(ndimage.center_of_mass(truth)))
            assert shift.max() < 0.5                                 # no systematic shift (voxels)


def test_train_resumes_to_the_same_weights_and_the_seed_decides_everything(tmp_path):
    cases = [make_case(s, size='mini') for s in (300, 301)]
    cfg = seg.seg_config('tiny', iterations=4, val_every=2, augment=True)
    a = seg.train(cfg, cases, out_dir=tmp_path / 'a', progress=False)
    seg.train(seg.seg_config('tiny', iterations=2, val_every=2, augment=True), cases, out_dir=tmp_path / 'b', progress=False)
    b = seg.train(cfg, cases, out_dir=tmp_path / 'b', resume=True, progress=False)
    assert list(b.history['step']) == [2, 4]
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    loaded = seg.load_model(tmp_path / 'a')                          # weights_only=True inside
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), a.state_dict().values()))
    assert seg.SegConfig.from_dict(seg.json.loads((tmp_path / 'a' / 'config.json').read_text())) == cfg


def test_multiclass_mode_trains_and_predicts():
    c = make_case(302, size='mini')
    cfg = seg.seg_config('tiny', 'segresnet', mode='multiclass', iterations=2, val_every=2, classes=['liver', 'spleen'])
    img, lab = seg.draw_batch(seg.make_cache([c], cfg), cfg, 0)
    assert img.shape == (2, 1, 32, 32, 32) and lab.shape == (2, 1, 32, 32, 32) and int(lab.max()) <= 2
    m = seg.train(cfg, [c], [c], progress=False)
    pred = seg.predict(c, m)
    assert sorted(pred.masks) == ['liver', 'spleen'] and pred.masks['liver'].shape == c.shape
    assert not (pred.masks['liver'] & pred.masks['spleen']).any()   # one label per voxel


def test_segment_and_evaluate_commands_end_to_end(cohort, trained, tmp_path):
    from abdomen_nb.pipeline import main
    src, ids = cohort
    root = tmp_path / 'ds'
    for cid in ids[7:10]:
        write_case(read_case(src / cid), root / cid)
    _, ckpt = trained
    # a broken case is recorded and skipped
    bad = root / 'BDMAP_00000099'; (bad / 'segmentations').mkdir(parents=True)
    (bad / 'ct.nii.gz').write_bytes(b'not a nifti')
    assert main(['segment', str(root), '--model', str(ckpt)]) == 1
    man = pd.read_csv(root / seg.manifest_name(), keep_default_na=False)
    assert sorted(man['case_id']) == sorted([*ids[7:10], 'BDMAP_00000099'])
    bad_row = man.set_index('case_id').loc['BDMAP_00000099']
    assert bad_row['status'] == 'failed' and 'CorruptFileError' in bad_row['error']
    assert (man.set_index('case_id').loc[ids[7:10], 'status'] == 'done').all()
    for cid in ids[7:10]:
        assert sorted(p.name for p in (root / cid / 'predictions').iterdir()) == sorted(f'{c}.nii.gz' for c in core.TOUCHSTONE_CLASSES)
    import shutil; shutil.rmtree(bad)
    # resumes: nothing left to do
    stamp = (root / ids[7] / 'predictions' / 'liver.nii.gz').stat().st_mtime_ns
    assert seg.main_segment([str(root), '--model', str(ckpt)]) == 0
    assert (root / ids[7] / 'predictions' / 'liver.nii.gz').stat().st_mtime_ns == stamp
    # (the manifest keeps the row of the deleted broken case from the earlier run: batch.run_batch merges rows)
    assert (pd.read_csv(root / seg.manifest_name()).set_index('case_id').loc[ids[7:10], 'status'] == 'skipped').all()
    # a prediction file that is not on the CT's grid is not "complete": that case is redone, the others skipped
    p = root / ids[8] / 'predictions' / 'spleen.nii.gz'
    img = nib.load(p); nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), p)
    assert seg.main_segment([str(root), '--model', str(ckpt)]) == 0
    st = pd.read_csv(root / seg.manifest_name()).set_index('case_id')['status']
    assert st[ids[8]] == 'done' and st[ids[7]] == 'skipped' and nib.load(p).shape == nib.load(root / ids[8] / 'ct.nii.gz').shape
    # TotalSegmentator-style folders as a second "model": the truth under TotalSegmentator names
    tsdir = tmp_path / 'totalseg'
    names = {'postcava': 'inferior_vena_cava', 'gall_bladder': 'gallbladder'}
    for cid in ids[7:10]:
        for f in (root / cid / 'segmentations').glob('*.nii.gz'):
            stem = f.name[:-7]
            if stem in core.TOUCHSTONE_CLASSES:
                (tsdir / cid).mkdir(parents=True, exist_ok=True)
                (tsdir / cid / f"{names.get(stem, stem)}.nii.gz").write_bytes(f.read_bytes())
    out = tmp_path / 'eval'
    assert main(['evaluate', str(root), '--pred', 'predictions', '--pred', str(tsdir), '--out', str(out)]) == 0
    dsc = pd.read_csv(out / 'predictions_dsc.csv')
    assert list(dsc.columns) == ['name', *core.TOUCHSTONE_CLASSES] and sorted(dsc['name']) == ids[7:10]
    perfect = pd.read_csv(out / 'totalseg_dsc.csv').set_index('name')
    truth = read_case(root / ids[7])
    assert perfect.loc[ids[7], 'liver'] == pytest.approx(2 * truth.masks['liver'].sum() / (2 * truth.masks['liver'].sum() + 1))
    assert (pd.read_csv(out / 'totalseg_nsd.csv').drop(columns='name').values == 1.0).all()
    for f in ['summary.csv', 'ranking.csv', 'pairwise_wilcoxon_holm.csv', 'significance.png', 'dsc_per_class.png']:
        assert (out / f).exists(), f
    assert pd.read_csv(out / 'ranking.csv')['model'].iloc[0] == 'totalseg'
    man = pd.read_csv(out / 'predictions' / 'manifest.csv')
    assert sorted(man['case_id']) == ids[7:10] and (man['status'] == 'done').all()


def test_torchrun_two_cpu_processes_on_gloo(cohort, tmp_path):
    root, ids = cohort
    data = tmp_path / 'ds'
    data.mkdir()
    for cid in ids[:3]: shutil.copytree(root / cid, data / cid)   # case links out of a dataset are refused
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        '-m', 'abdomen_nb.seg', 'train', str(data), '--out', str(tmp_path / 'ddp'),
                        '--iterations', '3', '--val-every', '3', '--no-progress'],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'DDP: 2 processes, parameters identical across ranks' in r.stdout
    hist = pd.read_csv(tmp_path / 'ddp' / 'history.csv')
    assert hist['world_size'].iloc[-1] == 2 and hist['step'].iloc[-1] == 3
    assert seg.load_model(tmp_path / 'ddp') is not None


@pytest.mark.parametrize('flip', [False, True])
def test_separable_resampling_equals_monai(flip):
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 9, 7, 5, generator=g)
    A = np.diag([5.0, 5.0, 4.0, 1.0]); A[:3, 3] = (-20.0, 13.0, -7.5)
    B = np.diag([0.8, -0.8 if flip else 0.8, 1.25, 1.0]); B[:3, 3] = (-23.0, 40.0 if flip else 9.0, -12.0)
    shape = (61, 52, 30)   # reaches past the source on some sides: border padding
    ref = SpatialResample(mode='bilinear', padding_mode='border')(MetaTensor(src, affine=torch.as_tensor(A)),
                                                                  dst_affine=torch.as_tensor(B), spatial_size=shape)
    np.testing.assert_allclose(seg.resample_linear(src, A, B, shape).numpy(), np.asarray(ref), atol=1e-5)
    R = np.eye(4); R[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert seg.resample_linear(src, A, R @ B, shape) is None     # oblique: the caller falls back to MONAI


def test_oblique_model_grid_falls_back_to_monai():
    # a model grid rotated against the CT grid: probs_to_masks takes MONAI's general resampling
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample
    case = CTCase(np.zeros((40, 36, 20), np.float32), np.diag([1.5, 1.5, 2.5, 1.0]), {})
    R = np.eye(4); R[:2, :2] = [[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]
    A = R @ np.diag([4.0, 4.0, 5.0, 1.0]); A[:3, 3] = (2.0, -3.0, 1.0)
    g = np.indices((16, 14, 10))
    probs = torch.from_numpy((((g[0] - 8) ** 2 / 16 + (g[1] - 7) ** 2 / 9 + (g[2] - 5) ** 2 / 9) <= 1).astype(np.float32))[None]
    assert seg.resample_linear(probs, A, case.affine, case.shape) is None
    cfg = seg.seg_config('tiny', classes=['liver'])
    got = seg.probs_to_masks(probs, A, case, cfg, postprocess=False)['liver']
    ref = np.asarray(SpatialResample(mode='bilinear', padding_mode='border')(
        MetaTensor(probs, affine=torch.as_tensor(A)), dst_affine=torch.as_tensor(case.affine), spatial_size=case.shape))[0] >= 0.5
    assert got.sum() > 100 and np.array_equal(got, ref)


# ------------------------------------------------------------------ Touchstone interop: files other tools wrote
def small_case(i, shape=(30, 28, 20), spacing=(1.5, 1.5, 2.5)):
    "A constructed case: two boxes of distinct HU, truth = the boxes."
    aff = np.diag([*spacing, 1.0])
    liver, spleen = np.zeros(shape, bool), np.zeros(shape, bool)
    liver[3 + i:15, 4:20, 3:15] = True; spleen[18:27, 6:16, 4:14] = True
    ct = np.full(shape, -100.0, np.float32); ct[liver] = 60; ct[spleen] = 120
    return CTCase(ct, aff, {'liver': liver, 'spleen': spleen}, meta={'case_id': f'BDMAP_{i + 1:08d}'})


@pytest.fixture()
def interop(tmp_path):
    "Five cases whose predictions are the truth, then damaged the ways other tools' files are."
    root = tmp_path / 'ds'
    cases = [small_case(i) for i in range(5)]
    for c in cases:
        d = write_case(c, root / c.case_id)
        for name in ('liver', 'spleen'):
            (d / 'predictions').mkdir(exist_ok=True)
            (d / 'predictions' / f'{name}.nii.gz').write_bytes((d / 'segmentations' / f'{name}.nii.gz').read_bytes())
    ids = [c.case_id for c in cases]
    aff = cases[0].affine
    pred = lambda i, n: root / ids[i] / 'predictions' / f'{n}.nii.gz'
    core.save_nifti((cases[0].masks['liver'] * 255).astype(np.uint8), aff, pred(0, 'liver'), overwrite=True)       # 0/255
    core.save_nifti(np.where(cases[1].masks['liver'], .75, .25).astype(np.float32), aff, pred(1, 'liver'), overwrite=True)  # probabilities
    core.save_nifti(cases[2].masks['liver'][:-2], aff, pred(2, 'liver'), overwrite=True)                              # another shape
    moved = aff.copy(); moved[0, 3] += 4.5
    core.save_nifti(cases[3].masks['liver'], moved, pred(3, 'liver'), overwrite=True)                                # another affine
    pred(4, 'spleen').unlink()                                                                                      # a missing class file
    return root, ids, cases


def test_evaluate_binarises_0_255_and_probabilities_and_leaves_bad_grids_out(interop):
    root, ids, cases = interop
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        s = ts.evaluate(root, classes=['liver', 'spleen'], progress=False)
    # 0/255 and probability maps: binarised at >= 0.5 (as Touchstone), so they score as the perfect masks they are
    t = s['dsc'].set_index('name')
    for i in (0, 1):
        n = cases[i].masks['liver'].sum()
        assert t.loc[ids[i], 'liver'] == pytest.approx(2 * n / (2 * n + 1))
    assert sorted(t.index) == ids[:2]
    assert any(issubclass(w.category, ts.NonBinaryPredictionWarning) and '2 case(s)' in str(w.message) for w in caught)
    # another shape, another affine, a missing class file: failed with the reason, left out; the run did not stop
    f = s.failed.set_index('case_id')['error']
    assert sorted(f.index) == ids[2:]
    assert 'GridMismatchError' in f[ids[2]] and '(28, 28, 20)' in f[ids[2]]
    assert 'GridMismatchError' in f[ids[3]] and 'affine' in f[ids[3]]
    assert 'MissingFileError' in f[ids[4]] and 'spleen' in f[ids[4]]
    # means are over the scored cases only
    assert ts.summarize(s).loc['DSC', 'liver'] == pytest.approx(t['liver'].mean())
    assert any('could not be scored' in str(w.message) and '3 case(s)' in str(w.message) for w in caught)


def test_missing_policy_drop_is_touchstones_and_zero_scores_the_missing_class_0(interop):
    root, ids, cases = interop
    drop = ts.evaluate(root, classes=['liver', 'spleen'], case_ids=[ids[4]], progress=False)
    assert len(drop['dsc']) == 0 and list(drop.failed['case_id']) == [ids[4]]
    with pytest.warns(UserWarning, match='scored as empty'):
        zero = ts.evaluate(root, classes=['liver', 'spleen'], case_ids=[ids[4]], progress=False, missing='zero')
    row = zero['dsc'].set_index('name').loc[ids[4]]
    n = cases[4].masks['liver'].sum()
    assert row['spleen'] == 0.0 and row['liver'] == pytest.approx(2 * n / (2 * n + 1))
    assert zero['nsd'].set_index('name').loc[ids[4], 'spleen'] == 0.0
    # a case with no prediction folder at all: left out (drop) or all zeros (zero)
    import shutil; shutil.rmtree(root / ids[4] / 'predictions')
    assert len(ts.evaluate(root, classes=['liver', 'spleen'], case_ids=[ids[4]], progress=False)['dsc']) == 0
    with pytest.warns(UserWarning):
        z = ts.evaluate(root, classes=['liver', 'spleen'], case_ids=[ids[4]], progress=False, missing='zero')
    assert z['dsc'].drop(columns='name').values.tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match='missing'): ts.evaluate(root, missing='skip')


def test_evaluate_command_missing_option_manifest_and_valid_json(interop, tmp_path, capsys):
    import json
    root, ids, cases = interop
    out = tmp_path / 'eval'
    assert ts.main_evaluate([str(root), '--pred', 'predictions', '--out', str(out), '--classes', 'liver', 'spleen']) == 0
    err = capsys.readouterr().err
    assert '3 case(s)' in err and 'binarised' in err
    assert sorted(pd.read_csv(out / 'predictions_dsc.csv')['name']) == ids[:2]
    man = pd.read_csv(out / 'predictions' / 'manifest.csv', keep_default_na=False).set_index('case_id')
    assert (man.loc[ids[:2], 'status'] == 'done').all() and (man.loc[ids[2:], 'status'] == 'failed').all()
    assert 'GridMismatchError' in man.loc[ids[2], 'error']
    for p in (out / 'predictions' / 'cases').glob('*.json'):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f'{p.name} holds {c}'))   # no NaN tokens
    out2 = tmp_path / 'eval_zero'
    assert ts.main_evaluate([str(root), '--pred', 'predictions', '--out', str(out2), '--classes', 'liver', 'spleen',
                             '--missing', 'zero']) == 0
    assert sorted(pd.read_csv(out2 / 'predictions_dsc.csv')['name']) == [ids[0], ids[1], ids[4]]
    assert '--missing' in ts.main_evaluate.__doc__
    with pytest.raises(SystemExit): ts.main_evaluate([str(root), '--pred', 'predictions', '--out', str(out2), '--missing', 'skip'])


def test_evaluate_resumes_and_rescores_a_changed_prediction(interop, tmp_path):
    root, ids, cases = interop
    run = tmp_path / 'run'
    ts.evaluate(root, classes=['liver', 'spleen'], case_ids=ids[:2], progress=False, out_dir=run)
    again = ts.evaluate(root, classes=['liver', 'spleen'], case_ids=ids[:2], progress=False, out_dir=run)
    assert (again.manifest['status'] == 'skipped').all()
    import os, time
    p = root / ids[1] / 'predictions' / 'spleen.nii.gz'
    core.save_nifti(np.zeros(cases[1].shape, bool), cases[1].affine, p, overwrite=True)
    later = time.time() + 5; os.utime(p, (later, later))
    third = ts.evaluate(root, classes=['liver', 'spleen'], case_ids=ids[:2], progress=False, out_dir=run)
    assert third.manifest.set_index('case_id')['status'].to_dict() == {ids[0]: 'skipped', ids[1]: 'done'}
    assert third['dsc'].set_index('name').loc[ids[1], 'spleen'] == 0.0


def test_pixdim_that_disagrees_with_the_affine_is_reported(tmp_path):
    # sform says 1.5 x 1.5 x 2.5 mm, qform (hence pixdim, what Touchstone reads) says 1 mm: NSD would differ
    c = small_case(0)
    d = write_case(c, tmp_path / 'ds' / c.case_id)
    for f in [d / 'segmentations' / 'liver.nii.gz', d / 'segmentations' / 'spleen.nii.gz']:
        img = nib.load(f); data = np.asarray(img.dataobj)
        new = nib.Nifti1Image(data, c.affine); new.set_sform(c.affine, code=1); new.set_qform(np.eye(4), code=1)
        nib.save(new, f)
    assert tuple(nib.load(f).header['pixdim'][1:4]) == (1.0, 1.0, 1.0)
    (d / 'predictions').mkdir()
    for n in ('liver', 'spleen'):
        core.save_nifti(np.roll(c.masks[n], 1, axis=2), c.affine, d / 'predictions' / f'{n}.nii.gz')
    with pytest.warns(ts.SpacingDisagreementWarning, match='pixdim'):
        s = ts.evaluate(tmp_path / 'ds', classes=['liver', 'spleen'], progress=False)
    assert 'sform' in s.notes['note'].iloc[0]
    # our NSD uses the affine's 2.5 mm slices: a one-slice shift is outside 1.5 mm (with pixdim's 1 mm it would be inside)
    got = s['nsd'].set_index('name').loc[c.case_id, 'liver']
    assert got == pytest.approx(ts.nsd(np.roll(c.masks['liver'], 1, axis=2), c.masks['liver'], (1.5, 1.5, 2.5)))
    assert got < ts.nsd(np.roll(c.masks['liver'], 1, axis=2), c.masks['liver'], (1.0, 1.0, 1.0)) == 1.0


def test_evaluate_cases_in_memory_leaves_a_mismatched_case_out():
    a, b = small_case(0), small_case(1)
    wrong = {'liver': a.masks['liver'][:-1], 'spleen': a.masks['spleen'][:-1]}
    s = ts.evaluate_cases([(a.masks, a), (wrong, b)], classes=['liver', 'spleen'])
    assert list(s['dsc']['name']) == [a.case_id]
    assert 'GridMismatchError' in s.failed.set_index('case_id').loc[b.case_id, 'error']


def test_segment_a_dicom_series_writes_nifti_masks_and_a_dicom_seg_referencing_it(cohort, trained, tmp_path):
    import pydicom
    from abdomen_nb.dicom import write_dicom_series
    from abdomen_nb.pipeline import main
    src, ids = cohort
    _, ckpt = trained
    case = read_case(src / ids[7])
    series = tmp_path / 'series'
    write_dicom_series(case, series, axes='LPS')   # stored LPS, as scanners write it
    out = tmp_path / 'out'
    with pytest.raises(core.AbdomenNBError, match='--out'):   # nothing is written into the series folder
        seg.main_segment([str(series), '--model', str(ckpt)])
    assert main(['segment', str(series), '--model', str(ckpt), '--out', str(out), '--dicom-seg']) == 0
    nifti = {p.name[:-7] for p in (out / 'predictions').glob('*.nii.gz')}
    assert nifti == set(trained[0].seg_config.classes)
    ds = pydicom.dcmread(out / 'predictions' / 'seg.dcm')
    assert ds.Modality == 'SEG'
    src_uid = pydicom.dcmread(sorted(series.glob('*.dcm'))[0]).SeriesInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src_uid
    referenced = {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in series.glob('*.dcm')}
    # one segment per predicted (non-empty) structure, named as the NIfTI masks are
    nonempty = {n for n in nifti if np.asarray(nib.load(str(out / 'predictions' / f'{n}.nii.gz')).dataobj).any()}
    labels = [s.SegmentLabel for s in ds.SegmentSequence]
    assert len(labels) == len(set(labels)) and set(labels) == nonempty and {'liver', 'spleen'} <= nonempty
    # the SEG's liver frames against the recorded truth of the phantom (the prediction is a tiny model's: overlap only)
    liver_n = [s.SegmentNumber for s in ds.SegmentSequence if s.SegmentLabel == 'liver'][0]
    frames = [i for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)
              if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == liver_n]
    assert ds.pixel_array[frames].sum() == np.asarray(nib.load(str(out / 'predictions' / 'liver.nii.gz')).dataobj).astype(bool).sum()
    # no overwrite without --overwrite (file untouched); with it, the same segments and frames
    # (not the same bytes: the file's header differs between runs, see dicom.write_dicom_seg)
    before = (out / 'predictions' / 'seg.dcm').stat().st_mtime_ns
    assert main(['segment', str(series), '--model', str(ckpt), '--out', str(out)]) == 1
    assert (out / 'predictions' / 'seg.dcm').stat().st_mtime_ns == before
    assert main(['segment', str(series), '--model', str(ckpt), '--out', str(out), '--overwrite']) == 0
    again = pydicom.dcmread(out / 'predictions' / 'seg.dcm')
    assert [s.SegmentLabel for s in again.SegmentSequence] == labels
    np.testing.assert_array_equal(again.pixel_array, ds.pixel_array)
    # a NIfTI case folder with --dicom-seg needs its source series
    case_dir = tmp_path / 'case'; write_case(case, case_dir)
    assert main(['segment', str(case_dir), '--model', str(ckpt), '--dicom-seg']) == 1
    assert main(['segment', str(case_dir), '--model', str(ckpt), '--dicom-seg', '--source-series', str(series)]) == 0
    assert pydicom.dcmread(case_dir / 'predictions' / 'seg.dcm').ReferencedSeriesSequence[0].SeriesInstanceUID == src_uid
