"""The bad-input corpus: each kind of broken input a user can hand the command line, built at test time
(in a temporary folder) from one good case folder. Files are written with nibabel, gzip and pydicom
directly, never with the package's own writers (except the DICOM series, which the DICOM writer makes
and the builder then breaks), so the corpus does not depend on the code under test.

`CASE_KINDS` break one case folder each (they run through `info` and inside a `report --dataset` batch);
the DICOM kinds run through `info` and `convert`; dataset-level kinds are built by the tests themselves."""
from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np


@dataclass
class Kind:
    name: str                 # short id
    what: str                 # one line for the table in chapter 90
    build: Callable           # build(case_dir) -> the offending file (Path); modifies a copy of a good case
    expect: str               # a fragment the message must hold (besides the file name)
    fails: bool = True        # False: the case is read (correctly, or with a warning), not refused


def _ct(case: Path): return case / 'ct.nii.gz'
def _mask(case: Path, name='liver'): return case / 'segmentations' / f'{name}.nii.gz'


def _load(p: Path):
    img = nib.load(str(p))
    return np.asarray(img.dataobj), img.affine


def _save(arr, affine, p: Path, **hdr):
    img = nib.Nifti1Image(arr, affine)
    for k, v in hdr.items(): img.header[k] = v
    nib.save(img, str(p))
    return p


def corrupt_gzip(case):
    p = _ct(case); p.write_bytes(b'\x1f\x8b\x08\x00' + np.random.default_rng(0).bytes(4000)); return p


def truncated_ct(case):
    p = _ct(case); b = p.read_bytes(); p.write_bytes(b[:len(b) // 2]); return p


def truncated_mask(case):
    p = _mask(case); b = p.read_bytes(); p.write_bytes(b[:len(b) // 2]); return p


def header_only(case):
    p = _ct(case)
    img = nib.load(str(p))
    p.write_bytes(gzip.compress(img.header.binaryblock + b'\x00' * 4))   # 348-byte header, extension flag, no data
    return p


def not_nifti(case):
    p = _ct(case); p.write_bytes(gzip.compress(b'patient,age\nBDMAP_1,54\n')); return p


def nan_ct(case):
    a, aff = _load(_ct(case))
    a = a.astype(np.float32); a[10, 10, 10] = np.nan; a[11, 10, 10] = np.inf
    return _save(a, aff, _ct(case))


def ct_4d(case):
    a, aff = _load(_ct(case))
    return _save(np.stack([a, a], -1), aff, _ct(case))


def int_slope(case):
    "int16 stored values with scl_slope 2, scl_inter -1024: a valid CT whose HU are 2 * stored - 1024."
    a, aff = _load(_ct(case))
    stored = np.round((a.astype(np.float32) + 1024) / 2).astype(np.int16)
    img = nib.Nifti1Image(stored, aff); img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(_ct(case)))
    return _ct(case)


def probabilistic_mask(case):
    m, aff = _load(_mask(case))
    soft = m.astype(np.float32) * 0.7; soft[soft == 0] = 0.0; soft[np.nonzero(m)[0][0], :3, :3] = 0.3
    return _save(soft, aff, _mask(case))


def label_map_as_mask(case):
    m, aff = _load(_mask(case))
    lab = m.astype(np.uint8); lab[np.nonzero(m)[0][0]] = np.where(m[np.nonzero(m)[0][0]] > 0, 2, 0)
    return _save(lab, aff, _mask(case))


def mask_other_shape(case):
    m, aff = _load(_mask(case))
    return _save(m[:-4].astype(np.uint8), aff, _mask(case))


def mask_other_affine(case):
    m, aff = _load(_mask(case))
    aff = aff.copy(); aff[:3, 3] += [10.0, 0, 0]
    return _save(m.astype(np.uint8), aff, _mask(case))


def mask_wrong_orientation(case):
    "The mask's header says LPS where the CT's says RAS (same shape): its voxels are elsewhere in space."
    m, aff = _load(_mask(case))
    flip = aff.copy(); flip[:2] *= -1
    return _save(m.astype(np.uint8), flip, _mask(case))


def _raw_write(p: Path, hdr, data: np.ndarray):
    "A .nii.gz from a header and voxels, bypassing nibabel's header sanitising (so a bad header stays bad)."
    hdr['vox_offset'] = 352
    p.write_bytes(gzip.compress(hdr.binaryblock + b'\x00' * 4 + np.asarray(data, hdr.get_data_dtype()).tobytes('F')))
    return p


def singular_affine(case):
    "sform with a zero third column (no slice direction), qform code 0."
    a, aff = _load(_ct(case))
    hdr = nib.load(str(_ct(case))).header.copy()
    hdr['qform_code'] = 0; hdr['sform_code'] = 1
    hdr['srow_z'] = [0.0, 0.0, 0.0, float(aff[2, 3])]
    return _raw_write(_ct(case), hdr, a)


def zero_spacing(case):
    "No orientation in the header (sform and qform codes 0) and pixdim z = 0."
    a, _ = _load(_ct(case))
    img = nib.Nifti1Image(a, None)
    img.header.set_sform(None, code=0); img.header.set_qform(None, code=0)
    img.header['pixdim'][1:4] = [0.8, 0.8, 0.0]
    nib.save(img, str(_ct(case)))
    return _ct(case)


def absurd_spacing(case):
    "A 5000 mm slice spacing in every file of the case (a header in micrometres read as mm, or garbage)."
    for p in sorted(case.rglob('*.nii.gz')):
        a, aff = _load(p)
        aff = aff.copy(); aff[:3, 2] *= 5000.0 / np.linalg.norm(aff[:3, 2])
        _save(a, aff, p)
    return _ct(case)


def unknown_structure(case):
    p = _mask(case); q = p.with_name('livr.nii.gz'); p.rename(q); return q


def huge_header(case):
    "A header that claims 2048 x 2048 x 1024 int16 (8 GiB as float32) over a few bytes of data."
    hdr = nib.Nifti1Header(); hdr.set_data_shape((2048, 2048, 1024)); hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([0.5, 0.5, 0.5, 1]), code=1); hdr.set_qform(np.diag([0.5, 0.5, 0.5, 1]), code=1)
    hdr['vox_offset'] = 352
    p = _ct(case); p.write_bytes(gzip.compress(hdr.binaryblock + b'\x00' * 4 + b'\x00' * 1024)); return p


def unreadable(case):
    "ct.nii.gz without read permission (only meaningful for a user other than root)."
    p = _ct(case); p.chmod(0o000); return p


CASE_KINDS = [
    Kind('corrupt_gzip', 'ct.nii.gz is gzip magic followed by garbage', corrupt_gzip, 'corrupt'),
    Kind('truncated_ct', 'ct.nii.gz cut off half way', truncated_ct, 'truncated'),
    Kind('truncated_mask', 'a mask file cut off half way', truncated_mask, 'truncated'),
    Kind('header_only', 'ct.nii.gz holds a NIfTI header and no voxels', header_only, 'truncated'),
    Kind('not_nifti', 'ct.nii.gz is a gzipped CSV', not_nifti, 'not a readable NIfTI'),
    Kind('nan_ct', 'the CT holds NaN and inf', nan_ct, 'NaN/inf'),
    Kind('ct_4d', 'a 4D CT (two volumes)', ct_4d, '3D volume is expected'),
    Kind('int_slope', 'int16 CT with scl_slope 2, scl_inter -1024 (valid: HU = 2 x stored - 1024)', int_slope, '',
         fails=False),
    Kind('probabilistic_mask', 'a mask holding 0.3 / 0.7 (probabilities)', probabilistic_mask, '0/1 is expected'),
    Kind('label_map_as_mask', 'a mask holding 0 / 1 / 2 (a label map)', label_map_as_mask, '0/1 is expected'),
    Kind('mask_other_shape', 'a mask on another grid (4 voxels fewer in x)', mask_other_shape, 'has shape'),
    Kind('mask_other_affine', 'a mask on a grid shifted by 10 mm', mask_other_affine, 'different affine'),
    Kind('mask_wrong_orientation', "a mask whose header says LPS where the CT's says RAS", mask_wrong_orientation,
         'different affine'),
    Kind('singular_affine', 'the CT affine has a zero column (singular)', singular_affine, 'spacing'),
    Kind('zero_spacing', 'no orientation codes and pixdim z = 0', zero_spacing, 'spacing'),
    Kind('absurd_spacing', 'a 5000 mm slice spacing', absurd_spacing, 'spacing'),
    Kind('unknown_structure', "a mask named 'livr' (not a known structure)", unknown_structure, "Did you mean 'liver'",
         fails=False),
    Kind('huge_header', 'a header claiming 2048 x 2048 x 1024 voxels over 1 kB of data', huge_header, 'max_voxels'),
]


def make_bad_case(good: Path, root: Path, index: int, kind: Kind) -> tuple[Path, Path]:
    "Copy the good case folder to root/BDMAP_9000000<index> and break it; (case folder, offending file)."
    case = root / f'BDMAP_{90000000 + index:08d}'
    shutil.copytree(good, case)
    return case, kind.build(case)


def tree_digest(folder: Path) -> dict:
    "Every file below `folder` -> (size, mtime_ns, sha1 of the bytes): to check nothing was touched."
    import hashlib
    out = {}
    for p in sorted(folder.rglob('*')):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out
