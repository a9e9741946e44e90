"""Bad-input corpus and round trips for abdomen_nb.core: each bad input raises its own error, with a
message that names the file and what to do, and nothing on disk is lost."""
import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from abdomen_nb import core
from abdomen_nb.core import CTCase, read_case, write_case, save_nifti, load_nifti, to_ras, AtlasDataset

LPS = np.array([[-0.7, 0, 0, 120.], [0, -0.7, 0, 80.], [0, 0, 2.5, -300.], [0, 0, 0, 1.]])


def make_case_dir(root: Path, case_id='BDMAP_00000001', affine=LPS, shape=(12, 10, 6)):
    "A small case written directly with nibabel (not with the code under test)."
    rng = np.random.default_rng(1)
    ct = rng.integers(-1000, 300, shape).astype(np.int16)
    liver = np.zeros(shape, np.uint8); liver[3:8, 2:6, 1:4] = 1
    d = root / case_id; (d / 'segmentations').mkdir(parents=True)
    nib.save(nib.Nifti1Image(ct, affine), str(d / 'ct.nii.gz'))
    nib.save(nib.Nifti1Image(liver, affine), str(d / 'segmentations' / 'liver.nii.gz'))
    return d, ct, liver


def test_lps_case_reads_in_ras_with_voxels_at_their_world_coordinates(tmp_path):
    d, ct, liver = make_case_dir(tmp_path)
    case = read_case(d)
    assert core.orientation(case.affine) == 'RAS'
    # every liver voxel's world coordinate is the same as in the file's own grid
    src_world = np.argwhere(liver) @ LPS[:3, :3].T + LPS[:3, 3]
    ras_world = case.world(np.argwhere(case.mask('liver')))
    assert sorted(map(tuple, np.round(src_world, 3))) == sorted(map(tuple, np.round(ras_world, 3)))
    i, j, k = 5, 7, 2
    w = LPS @ [i, j, k, 1]
    ijk = np.linalg.solve(case.affine, w)[:3].round().astype(int)
    assert case.ct[tuple(ijk)] == ct[i, j, k]


def test_flipped_axis_reads_in_ras(tmp_path):
    aff = np.diag([1.0, -1.0, 2.0, 1.0]); aff[:3, 3] = [0, 50, 0]   # y runs posterior
    d, ct, liver = make_case_dir(tmp_path, affine=aff)
    case = read_case(d)
    assert core.orientation(case.affine) == 'RAS'
    np.testing.assert_array_equal(case.ct, ct[:, ::-1, :])
    np.testing.assert_allclose(case.spacing, (1, 1, 2))


def test_round_trip_write_read(tmp_path):
    d, ct, liver = make_case_dir(tmp_path)
    case = read_case(d)
    write_case(case, tmp_path / 'out' / case.case_id)
    back = read_case(tmp_path / 'out' / case.case_id)
    np.testing.assert_array_equal(back.ct, case.ct)
    np.testing.assert_array_equal(back.mask('liver'), case.mask('liver'))
    np.testing.assert_allclose(back.affine, case.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, case.spacing, atol=1e-6)
    # written back in the file's own orientation: the arrays on disk are the originals
    on_disk = nib.load(tmp_path / 'out' / case.case_id / 'ct.nii.gz')
    assert core.orientation(on_disk.affine) == 'LPS'
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj), ct)


def test_missing_ct(tmp_path):
    (tmp_path / 'BDMAP_1' / 'segmentations').mkdir(parents=True)
    with pytest.raises(core.MissingFileError, match='no ct.nii.gz'):
        read_case(tmp_path / 'BDMAP_1')
    with pytest.raises(FileNotFoundError):  # also a built-in FileNotFoundError
        read_case(tmp_path / 'does_not_exist')


def test_truncated_gzip(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    raw = (d / 'ct.nii.gz').read_bytes()
    (d / 'ct.nii.gz').write_bytes(raw[: len(raw) // 2])
    with pytest.raises(core.CorruptFileError, match='ct.nii.gz'):
        read_case(d)


def test_not_a_nifti(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    (d / 'ct.nii.gz').write_bytes(gzip.compress(b'this is not a nifti file' * 20))
    with pytest.raises(core.CorruptFileError, match='not a readable NIfTI'):
        read_case(d)


def test_mask_shape_mismatch(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 5), np.uint8), LPS), str(d / 'segmentations' / 'spleen.nii.gz'))
    with pytest.raises(core.GridMismatchError, match='spleen.nii.gz.*Resample'):
        read_case(d)


def test_mask_affine_mismatch(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    shifted = LPS.copy(); shifted[0, 3] += 10
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.uint8), shifted), str(d / 'segmentations' / 'spleen.nii.gz'))
    with pytest.raises(core.GridMismatchError, match='different affine'):
        read_case(d)


def test_non_binary_mask(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    m = np.zeros((12, 10, 6), np.uint8); m[1, 1, 1] = 3
    nib.save(nib.Nifti1Image(m, LPS), str(d / 'segmentations' / 'spleen.nii.gz'))
    with pytest.raises(core.NonBinaryMaskError, match='labels_to_masks'):
        read_case(d)


def test_nan_in_ct(tmp_path):
    d, ct, _ = make_case_dir(tmp_path)
    bad = ct.astype(np.float32); bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, LPS), str(d / 'ct.nii.gz'))
    with pytest.raises(core.InvalidCTError, match='NaN'):
        read_case(d)


def test_implausible_hu_warns(tmp_path):
    d, ct, _ = make_case_dir(tmp_path)
    nib.save(nib.Nifti1Image((ct.astype(np.int32) + 5000).astype(np.int16), LPS), str(d / 'ct.nii.gz'))
    with pytest.warns(core.ImplausibleHUWarning, match='slope'):
        read_case(d)


def test_unknown_structure_warns_with_nearest_name(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    (d / 'segmentations' / 'liver.nii.gz').rename(d / 'segmentations' / 'livr.nii.gz')
    with pytest.warns(core.UnknownStructureWarning, match="Did you mean 'liver'"):
        read_case(d)


def test_zero_spacing(tmp_path):
    d, ct, _ = make_case_dir(tmp_path)
    img = nib.Nifti1Image(ct, None)          # no sform/qform: nibabel builds the affine from pixdim
    img.header['pixdim'][1:4] = [0.8, 0.8, 0.0]
    img.header.set_qform(None, code=0); img.header.set_sform(None, code=0)
    nib.save(img, str(d / 'ct.nii.gz'))
    with pytest.raises(core.InvalidSpacingError, match='pixdim'):
        load_nifti(d / 'ct.nii.gz')
    with pytest.raises(core.InvalidSpacingError):
        core.resample_case(CTCase(ct.astype(np.float32), np.eye(4)), (1, -1, 1))


def test_unsafe_case_id(tmp_path):
    for bad in ['../escape', '/etc/passwd', 'a/b', '..', '']:
        with pytest.raises(core.UnsafeCaseIdError):
            core.safe_case_dir(tmp_path, bad)
    make_case_dir(tmp_path)
    ds = AtlasDataset(tmp_path)
    with pytest.raises(core.UnsafeCaseIdError):
        ds['../BDMAP_00000001']


def test_huge_volume_refused_before_reading(tmp_path):
    d, *_ = make_case_dir(tmp_path)
    with pytest.raises(core.VolumeTooLargeError, match='max_voxels'):
        read_case(d, max_voxels=100)


def test_no_overwrite_and_no_loss(tmp_path):
    d, ct, _ = make_case_dir(tmp_path)
    case = read_case(d)
    before = (d / 'ct.nii.gz').read_bytes()
    case.ct[:] = 0
    with pytest.raises(core.OutputExistsError, match='overwrite=True'):
        write_case(case, d)
    assert (d / 'ct.nii.gz').read_bytes() == before          # untouched
    assert not [p for p in d.rglob('.tmp_*')]                # no temporary files left


def test_failed_write_leaves_no_partial_file(tmp_path):
    def boom(p):
        Path(p).write_text('partial'); raise RuntimeError('disk full')
    with pytest.raises(RuntimeError):
        core.atomic_write(tmp_path / 'x.json', boom)
    assert list(tmp_path.iterdir()) == []


def test_totalsegmentator_names_are_mapped(tmp_path):
    d, ct, liver = make_case_dir(tmp_path)
    ts = tmp_path / 'ts'; ts.mkdir()
    m = np.zeros(ct.shape, np.uint8); m[1:3, 1:3, 1:3] = 1
    nib.save(nib.Nifti1Image(m, LPS), str(ts / 'inferior_vena_cava.nii.gz'))
    lobe = np.zeros(ct.shape, np.uint8); lobe[5, 5, 5] = 1
    nib.save(nib.Nifti1Image(lobe, LPS), str(ts / 'lung_upper_lobe_left.nii.gz'))
    lobe2 = np.zeros(ct.shape, np.uint8); lobe2[6, 5, 5] = 1
    nib.save(nib.Nifti1Image(lobe2, LPS), str(ts / 'lung_lower_lobe_left.nii.gz'))
    case = core.read_totalseg(ts, read_case(d))
    assert case.mask('postcava').sum() == 8
    assert case.mask('lung_left').sum() == 2          # lobes merged


def test_resample_keeps_world_positions():
    aff = np.diag([0.7, 0.7, 3.0, 1.0]); aff[:3, 3] = [-50, 20, 100]
    m = np.zeros((60, 60, 20), bool); m[20:40, 25:35, 5:15] = True
    c = CTCase(np.zeros(m.shape, np.float32), aff, {'liver': m})
    r = core.resample_case(c, (1.5, 1.5, 1.5))
    centre_before = c.world(np.argwhere(m).mean(0))
    centre_after = r.world(np.argwhere(r.mask('liver')).mean(0))
    np.testing.assert_allclose(centre_after, centre_before, atol=1.0)


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    "Atomic writes (NIfTI, JSON) get 0666 & ~umask, as a plain open() would, and leave no temporary file."
    old = __import__('os').umask(umask)
    try:
        case = CTCase(np.zeros((4, 4, 4), np.float32), np.eye(4), {'liver': np.ones((4, 4, 4), bool)},
                      meta={'case_id': 'BDMAP_1', 'sex': 'F'})
        d = write_case(case, tmp_path / 'BDMAP_1')
    finally:
        __import__('os').umask(old)
    files = [p for p in d.rglob('*') if p.is_file()]
    assert {p.name for p in files} >= {'ct.nii.gz', 'liver.nii.gz', 'meta.json'}
    for p in files:
        assert p.stat().st_mode & 0o777 == mode, (p, oct(p.stat().st_mode & 0o777))
    assert not [p for p in d.rglob('.tmp_*')]


def test_core_dice_is_the_plain_definition():
    a = np.zeros((10, 10), bool); a[:5] = True
    b = np.zeros((10, 10), bool); b[:3] = True
    assert core.dice(a, b) == 2 * 30 / (50 + 30)
    assert core.dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    from abdomen_nb.touchstone import dsc    # Touchstone's variant adds 1 to the denominator
    assert dsc(a, b) == 2 * 30 / (50 + 30 + 1)


def test_nearest_resampling_equals_scipy_order_0():
    "resample_array(order=0) takes one index per axis; it must give scipy's affine_transform values exactly."
    from scipy import ndimage
    from abdomen_nb.core import resample_array
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 5, tuple(rng.integers(3, 30, 3))).astype(np.uint8)
        old, new = rng.choice([0.6640625, 0.7, 0.8, 1.0, 1.25, 2.5, 3.0], 3), rng.choice([0.5, 0.8, 1.0, 1.5, 2.0], 3)
        got = resample_array(a, old, new, order=0)
        scale = np.asarray(new) / np.asarray(old)
        ref = ndimage.affine_transform(a, scale, output_shape=got.shape, order=0, mode='nearest', prefilter=False)
        np.testing.assert_array_equal(got, ref)
        b = resample_array(a > 2, old, new, order=0)
        assert b.dtype == bool and np.array_equal(b, ref > 2)
