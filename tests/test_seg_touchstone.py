"""Segmentation (chapter 10, `seg`) and Touchstone scoring (chapter 11, `touchstone`).

Metric values are checked against closed forms on hand-made cubes and against MONAI / a brute-force
surface distance; statistics on constructed score tables; the trained model against the phantom's
recorded masks; the grid round trip on an LPS-stored case with an oracle network whose answer is known;
the two commands end to end; and `torchrun` with 2 CPU processes on Gloo.
"""
from __future__ import annotations

import csv, os, subprocess, sys, warnings
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
    sc = ts.score_case({'liver': z}, {'liver': z, 'spleen': cube((1, 1, 1), 3, (6, 6, 6))}, (1, 1, 1),
                       classes=['liver', 'spleen', 'aorta'])
    assert np.isnan(sc['dsc']['liver']) and np.isnan(sc['nsd']['liver'])   # empty truth: NaN
    assert sc['dsc']['spleen'] == 0.0 and sc['nsd']['spleen'] == 0.0       # missing prediction: 0
    assert np.isnan(sc['dsc']['aorta'])                                      # no truth mask: NaN


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
    rows = list(csv.DictReader(open(root / 'segment_failures.csv')))
    assert [r['case_id'] for r in rows] == ['BDMAP_00000099'] and 'CorruptFileError' in rows[0]['error']
    for cid in ids[7:10]:
        assert sorted(p.name for p in (root / cid / 'predictions').iterdir()) == sorted(f'{c}.nii.gz' for c in core.TOUCHSTONE_CLASSES)
    import shutil; shutil.rmtree(bad)
    # resumes: nothing left to do
    stamp = (root / ids[7] / 'predictions' / 'liver.nii.gz').stat().st_mtime_ns
    assert seg.main_segment([str(root), '--model', str(ckpt)]) == 0
    assert (root / ids[7] / 'predictions' / 'liver.nii.gz').stat().st_mtime_ns == stamp
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


def test_torchrun_two_cpu_processes_on_gloo(cohort, tmp_path):
    root, ids = cohort
    data = tmp_path / 'ds'
    data.mkdir()
    for cid in ids[:3]: (data / cid).symlink_to(root / cid, target_is_directory=True)
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
