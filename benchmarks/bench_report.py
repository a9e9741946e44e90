"""Benchmark: the full structured report of one full-size case (~512 x 512 x 300, 0.8 x 0.8 x 1 mm).

Target (issue 4): at most 5 s on one core and at most 3 GiB peak memory (RSS, case included).
Uses `abdomen_nb.phantom.make_case(size='full')` when the phantom chapter provides it, else a hand-made
case with the same ingredients (10+ structures, sub-segment maps, vessels, 5 tumors incl. a pancreatic
tumor wrapped around the SMA). On the phantom case it then times the head/body/tail split from the SMA
(`pancreas_parts_from_sma`, reports.md) with its Dice against the phantom's own map, and a report without that map.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_report.py [--runs 5] [--profile]
"""
import os
for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, '1')
import argparse, cProfile, pstats, resource, statistics, sys, time

import numpy as np

from abdomen_nb.core import CTCase
from abdomen_nb.critic import dice
from abdomen_nb.measure import measure_case, pancreas_parts_from_sma
from abdomen_nb.report import structured_report, narrative_rules, faithfulness

SHAPE, SPACING = (512, 512, 300), (0.8, 0.8, 1.0)


def _put(masks, name, shape, box, fn):
    "Set masks[name] (full grid) to fn(X, Y, Z) (world mm) evaluated only inside `box` (mm ranges)."
    sl = tuple(slice(max(int(lo / s), 0), min(int(np.ceil(hi / s)) + 1, n)) for (lo, hi), s, n in zip(box, SPACING, shape))
    g = np.ogrid[sl]
    X, Y, Z = (gi * s for gi, s in zip(g, SPACING))
    m = masks.setdefault(name, np.zeros(shape, bool))
    m[sl] |= np.broadcast_to(fn(X, Y, Z), m[sl].shape)
    return m


def ellipsoid(c, r):
    return (lambda X, Y, Z: ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1,
            [(ci - ri - 1, ci + ri + 1) for ci, ri in zip(c, r)])


def handmade_full_case(seed=0) -> CTCase:
    "A full-size case with 16 structures and 5 tumors (world mm = index x spacing; +x = patient's left here)."
    rng = np.random.default_rng(seed)
    masks = {}
    organs = {'liver': ((120, 200, 200), (75, 65, 70)), 'spleen': ((320, 230, 190), (40, 35, 45)),
              'kidney_right': ((140, 260, 120), (28, 30, 50)), 'kidney_left': ((280, 265, 120), (28, 30, 50)),
              'stomach': ((290, 150, 210), (45, 35, 40)), 'pancreas': ((225, 200, 160), (60, 14, 14)),
              'duodenum': ((150, 190, 150), (15, 15, 30)), 'colon': ((210, 120, 80), (90, 20, 20)),
              'adrenal_gland_left': ((270, 250, 175), (10, 6, 12))}
    for n, (c, r) in organs.items():
        f, box = ellipsoid(c, r); _put(masks, n, SHAPE, box, f)
    tube = lambda cx, cy, r, z0, z1: (lambda X, Y, Z: ((X - cx) ** 2 + (Y - cy) ** 2 <= r * r) & (Z >= z0) & (Z <= z1),
                                      [(cx - r - 1, cx + r + 1), (cy - r - 1, cy + r + 1), (z0, z1)])
    for n, args in {'aorta': (210, 250, 11, 20, 290), 'postcava': (170, 245, 10, 20, 290),
                    'superior_mesenteric_artery': (215, 180, 3.5, 60, 175),
                    'superior_mesenteric_vein': (200, 182, 4.5, 60, 160)}.items():
        f, box = tube(*args); _put(masks, n, SHAPE, box, f)
    ca = lambda X, Y, Z: ((X - 212) ** 2 + (Z - 185) ** 2 <= 16) & (Y >= 205) & (Y <= 240)
    _put(masks, 'celiac_trunk', SHAPE, [(206, 218), (205, 240), (179, 191)], ca)
    pv = lambda X, Y, Z: ((Y - 195) ** 2 + (Z - 175) ** 2 <= 25) & (X >= 150) & (X <= 300)
    _put(masks, 'portal_vein_and_splenic_vein', SHAPE, [(150, 300), (189, 201), (169, 181)], pv)
    for v in ('superior_mesenteric_artery', 'superior_mesenteric_vein', 'portal_vein_and_splenic_vein', 'celiac_trunk'):
        masks['pancreas'] &= ~masks[v]
    # tumors
    tumors = {'liver_hcc': ((100, 190, 220), 22), 'liver_metastasis': ((150, 220, 170), 9),
              'kidney_cyst': ((285, 270, 105), 12), 'pancreatic_cyst': ((265, 200, 160), 8)}
    for n, (c, r) in tumors.items():
        f, box = ellipsoid(c, (r, r, r)); _put(masks, n, SHAPE, box, f)
    def pdac(X, Y, Z):
        rad = np.sqrt((X - 215) ** 2 + (Y - 180) ** 2); ang = np.degrees(np.arctan2(Y - 180, X - 215))
        return (rad > 3.5) & (rad <= 15) & (np.abs(ang % 360 - 180) <= 100) & (np.abs(Z - 160) <= 12)
    _put(masks, 'pancreatic_pdac', SHAPE, [(195, 235), (160, 200), (145, 175)], pdac)
    masks['pancreatic_pdac'] &= ~masks['superior_mesenteric_vein']
    masks['liver_hcc'] &= masks['liver']; masks['liver_metastasis'] &= masks['liver']
    masks['kidney_cyst'] &= masks['kidney_left']
    masks['pancreas'] |= masks['pancreatic_pdac'] | masks['pancreatic_cyst']
    masks['liver_lesion'] = masks['liver_hcc'] | masks['liver_metastasis']
    masks['pancreatic_lesion'] = masks['pancreatic_pdac'] | masks['pancreatic_cyst']
    masks['kidney_lesion'] = masks['kidney_cyst'].copy()
    ct = np.full(SHAPE, -80, np.int16)
    for n, hu in [('liver', 100), ('spleen', 110), ('kidney_right', 160), ('kidney_left', 160), ('stomach', 30),
                  ('pancreas', 95), ('duodenum', 35), ('colon', -20), ('aorta', 180), ('postcava', 150),
                  ('superior_mesenteric_artery', 180), ('superior_mesenteric_vein', 160), ('celiac_trunk', 180),
                  ('portal_vein_and_splenic_vein', 160), ('liver_hcc', 60), ('liver_metastasis', 50),
                  ('kidney_cyst', 10), ('pancreatic_pdac', 50), ('pancreatic_cyst', 10)]:
        ct[masks[n]] = hu
    ct = (ct + rng.normal(0, 10, SHAPE).astype(np.float32)).astype(np.float32)
    # sub-segment maps
    liver_seg = np.zeros(SHAPE, np.uint8)
    b = tuple(slice(int(40 / s), int(280 / s)) for s in SPACING)
    g = np.ogrid[b]; X, Y, Z = (gi * s for gi, s in zip(g, SPACING))
    seg = np.where(Z >= 200, np.where(X < 120, 7, 8), np.where(X < 120, 6, 5)).astype(np.uint8)
    liver_seg[b] = np.where(masks['liver'][b], seg, 0)
    parts = np.zeros(SHAPE, np.uint8)
    b = tuple(slice(int(150 / s), int(300 / s)) for s in SPACING)
    g = np.ogrid[b]; X = g[0] * SPACING[0]
    parts[b] = np.where(masks['pancreas'][b], np.where(X < 215, 1, np.where(X < 255, 2, 3)), 0).astype(np.uint8)
    aff = np.diag([*SPACING, 1.0])
    return CTCase(ct, aff, masks, {'liver_segments': liver_seg, 'pancreas_parts': parts},
                  {'case_id': 'bench_full', 'phase': 'venous'})


def full_case():
    try:
        from abdomen_nb.phantom import make_case
    except ImportError:
        return handmade_full_case(), 'hand-made'
    tumors = [{'organ': 'liver', 'type': 'hcc', 'diameter_mm': 45}, {'organ': 'liver', 'type': 'metastasis', 'diameter_mm': 18},
              {'organ': 'kidney', 'type': 'cyst', 'diameter_mm': 24}, {'organ': 'pancreas', 'type': 'cyst', 'diameter_mm': 15},
              {'organ': 'pancreas', 'type': 'pdac', 'diameter_mm': 30, 'contact': {'superior_mesenteric_artery': 200}}]
    return make_case(0, phase='portal venous', tumors=tumors, size='full'), 'phantom'


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5); ap.add_argument('--profile', action='store_true')
    a = ap.parse_args(argv)
    t0 = time.perf_counter(); case, src = full_case(); t_make = time.perf_counter() - t0
    print(f"{src} case {case.shape}, spacing {tuple(round(s, 2) for s in case.spacing)} mm, {len(case.masks)} masks, "
          f"built in {t_make:.1f} s; RSS after building {peak_rss_gib():.2f} GiB")
    times = []
    for i in range(a.runs):
        t0 = time.perf_counter()
        m = measure_case(case); text = structured_report(m)
        times.append(time.perf_counter() - t0)
    f = faithfulness(narrative_rules(m), m)
    print(f"{len(m['lesions'])} lesions, {len(m['organs'])} organs; narrative faithful: {f['faithful']}")
    for l in m['lesions']:
        print(f"  {l['id']:<11} {l['type']:<10} {l['longest_diameter_mm']:5.1f} x {l['perpendicular_diameter_mm']:5.1f} mm "
              f"{l['volume_cm3']:6.1f} cm3 {l['location']:<24} {l.get('t_stage') or ''} "
              f"{ {k: v for k, v in (l.get('vessel_contact_deg') or {}).items() if v} }")
    print(f"structured report: median {statistics.median(times):.2f} s over {a.runs} runs "
          f"(min {min(times):.2f}, max {max(times):.2f}); peak RSS {peak_rss_gib():.2f} GiB")
    if src == 'phantom':   # the head/body/tail split of reports.md, against the phantom's own map
        t0 = time.perf_counter()
        parts = pancreas_parts_from_sma(case.masks['pancreas'], case.masks['superior_mesenteric_artery'], case.spacing)
        t_split = time.perf_counter() - t0
        own = case.labels['pancreas_parts']
        d = [dice(parts == k, own == k) for k in (1, 2, 3)]
        print(f"pancreas split from the SMA: {t_split:.2f} s; Dice with the phantom's map: head {d[0]:.3f}, "
              f"body {d[1]:.3f}, tail {d[2]:.3f}")
        del parts
        no_map = CTCase(case.ct, case.affine, case.masks, {k: v for k, v in case.labels.items() if k != 'pancreas_parts'}, case.meta)
        t0 = time.perf_counter(); m2 = measure_case(no_map); structured_report(m2); t_no = time.perf_counter() - t0
        print(f"structured report without the parts map ({m2['pancreas_split']}): {t_no:.2f} s; pancreatic locations "
              f"{[l['location'] for l in m2['lesions'] if l['organ'] == 'pancreas']} (with the map: "
              f"{[l['location'] for l in m['lesions'] if l['organ'] == 'pancreas']})")
    if a.profile:
        pr = cProfile.Profile(); pr.enable(); measure_case(case); pr.disable()
        pstats.Stats(pr).sort_stats('cumulative').print_stats(25)
    ok = statistics.median(times) <= 5.0 and peak_rss_gib() <= 3.0
    print('PASS' if ok else 'FAIL', '(targets: <= 5 s, <= 3 GiB)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
