"""Write a case the way AbdomenAtlas 3.0 / RadGPT users have it (test and benchmark data, not package code).

One binary file per structure under segmentations/, with the release's own names: per-segment files
(`liver_segment_1..8`, `pancreas_head/body/tail`) instead of label maps, `celiac_aa` (the celiac artery with
its branches, no separate hepatic or splenic artery files), `veins` (portal, splenic and superior
mesenteric veins), `common_bile_duct`, and an all-zero file for every lesion type the case does not have."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from abdomen_nb.core import CTCase, LESIONS, write_case, write_json, save_nifti, from_ras

MERGED = {'celiac_aa': ['celiac_trunk', 'common_hepatic_artery', 'splenic_artery'],
          'veins': ['portal_vein_and_splenic_vein', 'superior_mesenteric_vein'],
          'common_bile_duct': ['bile_duct']}
ORGANS = ['aorta', 'adrenal_gland_left', 'adrenal_gland_right', 'colon', 'duodenum', 'gall_bladder', 'intestine',
          'kidney_left', 'kidney_right', 'liver', 'pancreas', 'postcava', 'spleen', 'stomach', 'superior_mesenteric_artery']
EMPTY_LESIONS = ['pancreatic_pnet', 'pancreatic_pdac', 'pancreatic_cyst', 'pancreatic_lesion', 'kidney_tumor',
                 'kidney_cyst', 'kidney_lesion', 'liver_lesion']


def write_atlas3_case(case: CTCase, out_dir) -> Path:
    "Write `case` (a phantom with label maps and separate vessel masks) in the AbdomenAtlas 3.0 layout."
    out = Path(out_dir)
    write_case(CTCase(case.ct, case.affine, {}, {}, dict(case.meta)), out, combined=False)
    if "truth" in case.meta: write_json(case.meta["truth"], out / "truth.json")
    src = case.meta.get('source_affine')
    aff = case.affine if src is None else np.asarray(src, float)
    back = (lambda a: a) if src is None else (lambda a: from_ras(a, case.affine, aff))
    seg = out / 'segmentations'
    def put(name, m): save_nifti(back(np.asarray(m, bool)), aff, seg / f'{name}.nii.gz')
    for n in ORGANS:
        if n in case.masks: put(n, case.masks[n])
    for n, parts in MERGED.items():
        have = [case.masks[p] for p in parts if p in case.masks]
        if have: put(n, np.logical_or.reduce(have))
    for lname, names in (('liver_segments', [f'liver_segment_{i}' for i in range(1, 9)]),
                         ('pancreas_parts', ['pancreas_head', 'pancreas_body', 'pancreas_tail'])):
        for i, n in enumerate(names, start=1): put(n, case.labels[lname] == i)
    for n in LESIONS:
        if n in case.masks: put(n, case.masks[n])
    zeros = np.zeros(case.shape, bool)
    for n in EMPTY_LESIONS:
        if n not in case.masks: put(n, zeros)
    return out


# the full-resolution benchmark case of issue 14 (benchmarks/bench_report.py, tests/test_atlas3_case.py):
# phantom seed 0, portal venous, five lesions, a PDAC wrapped 200 degrees around the SMA
FULL_TUMORS = [{'organ': 'liver', 'type': 'hcc', 'diameter_mm': 45}, {'organ': 'liver', 'type': 'metastasis', 'diameter_mm': 18},
               {'organ': 'kidney', 'type': 'cyst', 'diameter_mm': 24}, {'organ': 'pancreas', 'type': 'cyst', 'diameter_mm': 15},
               {'organ': 'pancreas', 'type': 'pdac', 'diameter_mm': 30, 'contact': {'superior_mesenteric_artery': 200}}]
