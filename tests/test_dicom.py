"""DICOM in and DICOM-SEG out, end to end: series the tests build from a phantom case (LPS, RAS, reversed
slice order, non-integer HU), converted through `abdomen-nb convert` and read back; HU, geometry and every
mask must survive to the voxel. Headers are checked with pydicom directly, NIfTI files with nibabel."""
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from abdomen_nb.core import CTCase, read_case, write_case
from abdomen_nb.dicom import (MissingSliceError, MultipleSeriesError, ResampledSeriesWarning, read_dicom_case,
                              write_dicom_seg, write_dicom_series)
from abdomen_nb.core import VolumeTooLargeError
from abdomen_nb.phantom import make_case

EXE = Path(sys.executable).with_name('abdomen-nb')


def cli(*args):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def phantom():
    return make_case(seed=5, size='mini', case_id='BDMAP_00000005')


def nonempty(case): return {n: np.asarray(m, bool) for n, m in case.masks.items() if np.asarray(m).any()}


def world_of(case, mask):
    return sorted(map(tuple, np.round(case.world(np.argwhere(mask)), 3)))


@pytest.mark.parametrize('axes,descending', [('LPS', False), ('LPS', True), ('RAS', True), ('LAI', False)])
def test_series_and_seg_round_trip_in_process(phantom, tmp_path, axes, descending):
    d = tmp_path / 'series'
    files = write_dicom_series(phantom, d, axes=axes, descending=descending)
    write_dicom_seg(phantom, d, d / 'seg.dcm')
    hdr = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    z = [float(h.ImagePositionPatient[2]) for h in hdr]
    if axes[2] in 'SI':   # the file order really is reversed / increasing as asked
        assert (np.diff(z) < 0).all() == (descending != (axes[2] == 'I'))
    back = read_dicom_case(d)
    assert back.shape == phantom.shape
    np.testing.assert_allclose(back.affine, phantom.affine, atol=1e-4)
    assert np.array_equal(back.ct, phantom.ct)              # whole HU: slope 1, exact
    truth = nonempty(phantom)
    assert sorted(back.masks) == sorted(truth)
    for n, m in truth.items():
        assert np.array_equal(back.masks[n], m), n
    # the world position of every liver voxel is unchanged
    assert world_of(back, back.masks['liver']) == world_of(phantom, truth['liver'])


def test_non_integer_hu_survive_within_half_the_rescale_slope(phantom, tmp_path):
    ct = phantom.ct + np.random.default_rng(0).uniform(-0.5, 0.5, phantom.shape).astype(np.float32)
    case = CTCase(ct, phantom.affine, {}, {}, {'case_id': 'float_hu'})
    files = write_dicom_series(case, tmp_path / 's', axes='LPS')
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    assert 0 < slope < 0.1
    back = read_dicom_case(tmp_path / 's')
    assert np.abs(back.ct - ct).max() <= slope / 2 + 1e-3


def test_convert_cli_round_trip_from_an_lps_nifti_case(phantom, tmp_path):
    lps = np.array([[-0.8, 0, 0, 100.], [0, -0.8, 0, 90.], [0, 0, 2.0, -40.], [0, 0, 0, 1.]])
    rng = np.random.default_rng(2)
    ct = rng.integers(-1000, 400, (24, 20, 10)).astype(np.int16)
    liver = np.zeros(ct.shape, np.uint8); liver[4:15, 3:12, 2:8] = 1
    spleen = np.zeros(ct.shape, np.uint8); spleen[16:22, 10:18, 1:5] = 1
    src = tmp_path / 'BDMAP_00000042'; (src / 'segmentations').mkdir(parents=True)
    nib.save(nib.Nifti1Image(ct, lps), str(src / 'ct.nii.gz'))
    nib.save(nib.Nifti1Image(liver, lps), str(src / 'segmentations' / 'liver.nii.gz'))
    nib.save(nib.Nifti1Image(spleen, lps), str(src / 'segmentations' / 'spleen.nii.gz'))
    r = cli('convert', src, '--to', 'dicom', '--out', tmp_path / 'dcm', '--reverse')
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / 'dcm').glob('CT_*.dcm'))) == 10 and (tmp_path / 'dcm' / 'seg.dcm').exists()
    r = cli('convert', tmp_path / 'dcm', '--out', tmp_path / 'BDMAP_00000042_back')
    assert r.returncode == 0, r.stderr
    img = nib.load(str(tmp_path / 'BDMAP_00000042_back' / 'ct.nii.gz'))
    np.testing.assert_allclose(img.affine, lps, atol=1e-4)  # written back on the file's own LPS grid
    assert np.array_equal(np.asarray(img.dataobj), ct)
    for name, m in [('liver', liver), ('spleen', spleen)]:
        got = nib.load(str(tmp_path / 'BDMAP_00000042_back' / 'segmentations' / f'{name}.nii.gz'))
        np.testing.assert_allclose(got.affine, lps, atol=1e-4)
        assert np.array_equal(np.asarray(got.dataobj), m), name
    # refusing to overwrite: a second conversion into the same folder fails and leaves the files alone
    before = (tmp_path / 'dcm' / 'CT_0001.dcm').stat().st_mtime_ns
    r = cli('convert', src, '--to', 'dicom', '--out', tmp_path / 'dcm')
    assert r.returncode == 1 and '--overwrite' in r.stderr
    assert (tmp_path / 'dcm' / 'CT_0001.dcm').stat().st_mtime_ns == before


def test_seg_header_references_the_series_with_snomed_codes(phantom, tmp_path):
    d = tmp_path / 's'
    write_dicom_series(phantom, d)
    seg = pydicom.dcmread(write_dicom_seg(phantom, d, d / 'seg.dcm', structures=['liver', 'kidney_left', 'pancreatic_lesion']))
    series_uid = pydicom.dcmread(d / 'CT_0001.dcm').SeriesInstanceUID
    assert seg.Modality == 'SEG' and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    segs = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segs) <= {'liver', 'kidney_left', 'pancreatic_lesion'} and {'liver', 'kidney_left'} <= set(segs)
    assert segs['liver'].SegmentedPropertyTypeCodeSequence[0].CodeValue == '10200004'
    assert segs['liver'].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == 'SCT'
    assert segs['kidney_left'].SegmentedPropertyTypeCodeSequence[0].CodeValue == '64033007'
    assert segs['kidney_left'].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == '7771000'   # left
    if 'pancreatic_lesion' in segs:
        assert segs['pancreatic_lesion'].SegmentedPropertyCategoryCodeSequence[0].CodeValue == '49755003'


def test_same_case_gives_byte_identical_series(phantom, tmp_path):
    a = write_dicom_series(phantom, tmp_path / 'a')
    b = write_dicom_series(phantom, tmp_path / 'b')
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_info_reads_a_dicom_series_folder(phantom, tmp_path):
    write_dicom_series(phantom, tmp_path / 'BDMAP_00000005', axes='LPS', descending=True)
    r = cli('info', tmp_path / 'BDMAP_00000005', '--json')
    assert r.returncode == 0, r.stderr
    import json
    info = json.loads(r.stdout)
    assert info['shape'] == list(phantom.shape) and info['orientation_on_disk'] == 'LPS'
    assert info['spacing_mm'] == pytest.approx(list(phantom.spacing), abs=1e-4)
    assert info['hu_min'] == float(phantom.ct.min()) and info['hu_max'] == float(phantom.ct.max())


def test_two_series_are_listed_and_one_is_chosen_by_uid(phantom, tmp_path):
    d = tmp_path / 'two'
    a = write_dicom_series(phantom, d, axes='LPS')
    write_dicom_series(make_case(seed=6, size='mini'), d / 'second', axes='RAS')
    uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in [a[0], next((d / 'second').glob('*.dcm'))]}
    r = cli('convert', d, '--out', tmp_path / 'case')
    assert r.returncode == 1 and 'holds 2 series' in r.stderr and all(u in r.stderr for u in uids)
    assert not (tmp_path / 'case').exists()
    with pytest.raises(MultipleSeriesError):
        read_dicom_case(d)
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    r = cli('convert', d, '--out', tmp_path / 'case', '--series', uid)
    assert r.returncode == 0, r.stderr
    assert nib.load(str(tmp_path / 'case' / 'ct.nii.gz')).shape == phantom.shape


def test_a_missing_slice_is_refused_or_resampled(phantom, tmp_path):
    d = tmp_path / 'gap'
    files = write_dicom_series(phantom, d)
    files[30].unlink()
    with pytest.raises(MissingSliceError, match='1 slice'):
        read_dicom_case(d)
    r = cli('convert', d, '--out', tmp_path / 'c')
    assert r.returncode == 1 and 'missing' in r.stderr and str(d) in r.stderr
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        case = read_dicom_case(d, resample_uneven=True)
    assert any(issubclass(x.category, ResampledSeriesWarning) for x in w)
    assert case.shape == phantom.shape


def test_volume_size_is_checked_before_pixels_are_read(phantom, tmp_path):
    write_dicom_series(phantom, tmp_path / 's')
    with pytest.raises(VolumeTooLargeError, match='max_voxels'):
        read_dicom_case(tmp_path / 's', max_voxels=1000)


def test_same_masks_give_a_byte_identical_seg(phantom, tmp_path):
    "No clock time or random UID in seg.dcm: the same masks on the same series write the same bytes (a rerun is a no-op)."
    d = tmp_path / 's'
    write_dicom_series(phantom, d)
    a = write_dicom_seg(phantom, d, tmp_path / 'a.dcm', structures=['liver', 'spleen']).read_bytes()
    time.sleep(1.1)   # a clock-derived field (InstanceCreationTime, ContributionDateTime) would now differ
    b = write_dicom_seg(phantom, d, tmp_path / 'b.dcm', structures=['liver', 'spleen']).read_bytes()
    assert a == b
    write_dicom_seg(phantom, d, tmp_path / "c.dcm", structures=["liver"])
    assert pydicom.dcmread(tmp_path / 'c.dcm').SeriesInstanceUID != pydicom.dcmread(tmp_path / 'a.dcm').SeriesInstanceUID
