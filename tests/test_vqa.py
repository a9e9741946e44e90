"""DeepTumorVQA chapter: generated answers against the phantom's recorded truth, multiple-choice options,
letter balance, the scorer on hand-computed cases, determinism, answer leaks, the answerers, and the CLI.

Answers recomputed here come from `case.meta['truth']` (and, for the two things the truth does not record,
the lesion-instance and liver-segment label maps), with the clinical rules written out again in this file:
never from `abdomen_nb.vqa`'s answer programs. The measurement chapter measures on a 1 mm grid what the
phantom drew on ~3.5 mm voxels, so numbers are compared with tolerances and rule answers are skipped when
the truth sits within a margin of a threshold. The HU tolerances are wide for a known reason: the measurement
chapter averages HU on a linearly resampled 1 mm crop, and on the mini phantom's 3.5 mm voxels the organ
boundary mixes with fat (pancreas and kidneys read 10-20 HU low, a 28 mm kidney cyst ~25 HU high); the mean
of the CT over the truth masks on the native grid matches the recorded truth to ~1 HU.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from abdomen_nb import vqa
from abdomen_nb import vqa_answerers as va
from abdomen_nb.core import AtlasDataset, write_case

SPECS = {  # seed -> (phase, tumors): lesions big and far from the rules' thresholds. The patients drawn for these
    # seeds: 82 has a fatty pancreas and moderate splenomegaly, 32 a fatty liver and mild splenomegaly.
    82: ('portal venous', [dict(organ='liver', type='metastasis', diameter_mm=50),
                           dict(organ='liver', type='metastasis', diameter_mm=18),
                           dict(organ='liver', type='hcc', diameter_mm=16),
                           dict(organ='pancreas', type='pdac', diameter_mm=30, contact={'superior_mesenteric_artery': 300.0}),
                           dict(organ='kidney', type='cyst', diameter_mm=28)]),
    32: ('non-contrast', [dict(organ='pancreas', type='pnet', diameter_mm=40),
                          dict(organ='pancreas', type='cyst', diameter_mm=36, hu=45.0),
                          dict(organ='kidney', type='tumor', diameter_mm=34),
                          dict(organ='liver', type='cyst', diameter_mm=30)]),
    13: ('arterial', 'none'),
}


@pytest.fixture(scope='module')
def cases():
    from abdomen_nb.phantom import make_case
    return [make_case(seed, phase=phase, tumors=tumors) for seed, (phase, tumors) in SPECS.items()]


@pytest.fixture(scope='module')
def facts(cases):
    return [vqa.case_facts(c) for c in cases]


@pytest.fixture(scope='module')
def records(facts):
    return vqa.generate_dataset(facts, seed=0, progress=False)


# ---------------------------------------------------------------------------------------------------------
# The truth side: every answer recomputed from meta['truth'] with the rules of vqa.md written out again.
# A function returns (value, certain); certain=False when the truth is within a margin of a threshold.
# ---------------------------------------------------------------------------------------------------------
HU_MARGIN, VOL_MARGIN, RATIO_MARGIN, DEG_MARGIN, MM_MARGIN = 20.0, 0.08, 0.2, 60.0, 4.0
LIVER_HU_MARGIN, LS_MARGIN = 8.0, 0.1   # liver and spleen are large: their HU is measured within ~5 HU
GROUP = {'liver': 'liver', 'pancreas': 'pancreas', 'kidney_left': 'kidney', 'kidney_right': 'kidney'}
ROMAN = ['I', 'II', 'III', 'IV', 'V', 'VI', 'VII', 'VIII']


class Truth:
    def __init__(self, case):
        self.case, self.T = case, case.meta['truth']
        self.organs = self.T['organs']
        self.lesions = [dict(l, group=GROUP[l['organ']]) for l in self.T['lesions']]

    def vol(self, organ):
        o = self.organs.get(organ)
        return None if o is None or o['touches_border'] else o['volume_cm3']

    def hu(self, organ): return self.organs[organ]['mean_hu']

    def group(self, g, types=None):
        return [l for l in self.lesions if l['group'] == g and (types is None or l['type'] in types)]

    def largest(self, g, types=None):
        ls = self.group(g, types)
        return max(ls, key=lambda l: (l['longest_diameter_mm'], l['volume_cm3'])) if ls else None

    def z_range(self, lesion):
        inst = self.case.labels['lesion_instances']
        z = np.flatnonzero((inst == lesion['id']).any(axis=(0, 1)))
        return int(z.min()), int(z.max())


def far(x, thr, margin, rel=False):
    return abs(x - thr) > (margin * abs(thr) if rel else margin)


def truth_answer(t: Truth, subtype: str, slots: dict):
    "The expected answer and whether it is certain (far from every threshold it depends on)."
    s = slots
    if subtype == 'PDAC existence': return bool(t.group('pancreas', ['pdac'])), True
    if subtype == 'PNET existence': return bool(t.group('pancreas', ['pnet'])), True
    if subtype == 'kidney cyst existence': return bool(t.group('kidney', ['cyst'])), True
    if subtype == 'kidney tumor existence': return bool(t.group('kidney', ['tumor'])), True
    if subtype == 'kidney lesion existence': return any(l['organ'] == s['organ'] for l in t.lesions), True
    if subtype == 'liver lesion existence': return bool(t.group('liver')), True
    if subtype == 'pancreatic lesion existence': return bool(t.group('pancreas')), True
    if subtype == 'colon lesion existence': return False, True          # the phantom draws no colon lesions
    if subtype in ('splenomegaly detection', 'splenomegaly grading'):
        v = t.vol('spleen')
        if subtype == 'splenomegaly detection': return v > 314.5, far(v, 314.5, VOL_MARGIN, True)
        grade = 'normal' if v <= 314.5 else 'mild' if v <= 500 else 'moderate' if v <= 800 else 'severe'
        return grade, all(far(v, b, VOL_MARGIN, True) for b in (314.5, 500, 800))
    if subtype == 'organ volume measurement': return t.vol(s['organ']), True
    if subtype == 'organ HU measurement': return t.hu(s['organ']), True
    if subtype == 'organ HU ratio':
        a, b = s['pair'].split('/'); return t.hu(a) / t.hu(b), True
    if subtype == 'organ aggregation':
        os_ = ('kidney_left', 'kidney_right') if s['group'] == 'kidneys' else ('liver', 'spleen')
        return sum(t.vol(o) for o in os_), True
    if subtype == 'organ enlargement':
        thr = {'spleen': 314.5, 'kidney_left': 207.6, 'kidney_right': 207.6, 'liver': 3000, 'pancreas': 83}[s['organ']]
        v = t.vol(s['organ']); return v > thr, far(v, thr, VOL_MARGIN, True)
    if subtype == 'kidney volume comparison':
        l, r = t.vol('kidney_left'), t.vol('kidney_right')
        return ('left kidney' if l > r else 'right kidney'), abs(l - r) > VOL_MARGIN * max(l, r)
    if subtype in ('fatty liver', 'hepatic steatosis grading'):
        lhu, shu = t.hu('liver'), t.hu('spleen'); r = lhu / shu
        if subtype == 'fatty liver': return ('fatty liver' if r < 1.0 else 'normal liver'), far(r, 1.0, LS_MARGIN)
        def g_hu(x): return 0 if x >= 58 else 1 if x >= 51 else 2 if x >= 39 else 3
        def g_r(x): return 0 if x >= 1.0 else 1 if x >= 0.8 else 2 if x >= 0.5 else 3
        # the grade is the worse of the two; it is certain when it is the same anywhere within the margins
        worst = {max(g_hu(h), g_r(q)) for h in (lhu - LIVER_HU_MARGIN, lhu, lhu + LIVER_HU_MARGIN)
                 for q in (r - LS_MARGIN, r, r + LS_MARGIN)}
        return ['G0 (none)', 'G1 (mild)', 'G2 (moderate)', 'G3 (severe)'][max(g_hu(lhu), g_r(r))], len(worst) == 1
    if subtype == 'pancreatic steatosis':
        r = t.hu('pancreas') / t.hu('spleen'); return r < 0.70, far(r, 0.70, RATIO_MARGIN)
    if subtype == 'portal hypertension assessment':
        lm = t.case.labels['liver_segments']
        vox = np.bincount(lm.ravel(), minlength=9)
        ratio = vox[1] / vox[5:9].sum()
        v = t.vol('spleen')
        return (v > 314.5 and ratio > 0.65), far(v, 314.5, VOL_MARGIN, True) and far(ratio, 0.65, RATIO_MARGIN)
    if subtype == 'multi-organ lesion burden comparison':
        tot = {g: sum(l['volume_cm3'] for l in t.group(g)) for g in ('liver', 'pancreas', 'kidney')}
        top = sorted(tot.items(), key=lambda kv: -kv[1])
        return {'liver': 'liver', 'pancreas': 'pancreas', 'kidney': 'kidneys'}[top[0][0]], top[0][1] > 1.3 * top[1][1]
    if subtype == 'bilateral kidney asymmetry':
        v = {side: sum(l['volume_cm3'] for l in t.lesions if l['organ'] == side) for side in ('kidney_left', 'kidney_right')}
        return ('left kidney' if v['kidney_left'] > v['kidney_right'] else 'right kidney'), True
    if subtype == 'lesion count by location':
        seg = s['segment']
        if seg.startswith('kidney'): return sum(1 for l in t.lesions if l['organ'] == seg), True
        g = 'liver' if seg.startswith('liver') else 'pancreas'
        return sum(1 for l in t.group(g) if seg in l['subsegments']), True
    if subtype == 'liver lesion clustering':
        ls = t.group('liver'); n = len(ls)
        c = Counter(x for l in ls for x in l['subsegments']).most_common()
        if c[0][1] / n > 0.5: return 'highly clustered', True
        top2 = {c[0][0]} | ({c[1][0]} if len(c) > 1 else set())
        share = sum(1 for l in ls if top2 & set(l['subsegments'])) / n
        return ('somewhat clustered' if share >= 0.75 else 'widely distributed'), True
    if subtype == 'adjacent organ':   # RadGPT looks for contact with these organs only
        l = t.largest('pancreas')
        names = {'adrenal_gland_left': 'left adrenal gland', 'spleen': 'spleen', 'colon': 'colon', 'kidney_left': 'left kidney',
                 'stomach': 'stomach', 'duodenum': 'duodenum', 'bile_duct': 'bile duct', 'intestine': 'small intestine'}
        return ' and '.join(sorted(names[o] for o in l['organ_contacts'] if o in names)), True
    if subtype == 'inter-segment comparison':
        c = Counter(x for l in t.group(s['lorgan']) for x in l['subsegments']).most_common(1)[0][0]
        if c.startswith('liver_segment_'): return f"hepatic segment {ROMAN[int(c.rsplit('_', 1)[1]) - 1]}", True
        return 'pancreatic ' + c.split('_')[1], True
    # lesion-group questions
    g = s.get('lorgan')
    if subtype == 'lesion counting': return len(t.group(g)), True
    if subtype == 'tumor burden percentage':
        organs = ['kidney_left', 'kidney_right'] if g == 'kidney' else [g]
        return 100 * sum(l['volume_cm3'] for l in t.group(g)) / sum(t.vol(o) for o in organs), True
    if subtype == 'lesion outlier':
        v = sorted((l['volume_cm3'] for l in t.group(g)), reverse=True)
        return (len(v) >= 3 and v[0] >= 3 * v[1]), len(v) < 3 or far(v[0] / v[1], 3, RATIO_MARGIN * 5)
    if subtype == 'pancreatic cyst resectability':
        c = t.largest('pancreas', ['cyst'])
        return (c['volume_cm3'] > 3 or c['longest_diameter_mm'] > 30), \
            far(c['volume_cm3'], 3, VOL_MARGIN * 2, True) or far(c['longest_diameter_mm'], 30, MM_MARGIN)
    if subtype == 'pseudocyst determination':
        c = t.largest('pancreas', ['cyst']); return c['mean_hu'] > 14.5, far(c['mean_hu'], 14.5, HU_MARGIN)
    if subtype == 'renal mass characterization':
        k = t.largest('kidney'); return ('solid tumor' if k['mean_hu'] > 34.8 else 'cyst'), far(k['mean_hu'], 34.8, HU_MARGIN)
    if subtype == 'PDAC vs PNET classification':
        return t.largest('pancreas', ['pdac', 'pnet'])['type'].upper(), True
    if subtype == 'pancreatic tumor staging':
        l = t.largest('pancreas', ['pdac', 'pnet'])
        deg = l['vessel_contact_deg'] or {}
        angles = [deg.get(v, 0) or 0 for v in ('superior_mesenteric_artery', 'celiac_trunk', 'common_hepatic_artery')]
        d = l['longest_diameter_mm']
        stage = 'T4' if max(angles) >= 180 else 'T1' if d <= 20 else 'T2' if d <= 40 else 'T3'
        return stage, all(far(a, 180, DEG_MARGIN) for a in angles) and far(d, 20, MM_MARGIN) and far(d, 40, MM_MARGIN)
    if subtype == 'pancreatic lesion resectability':   # reports.md rule on the recorded contact angles
        l = t.largest('pancreas', ['pdac'])
        deg = l['vessel_contact_deg'] or {}
        a = {'SMA': deg.get('superior_mesenteric_artery', 0), 'CA': deg.get('celiac_trunk', 0),
             'CHA': deg.get('common_hepatic_artery', 0), 'IVC': deg.get('postcava', 0),
             'PV/SMV': max(deg.get('portal_vein_and_splenic_vein', 0), deg.get('superior_mesenteric_vein', 0))}
        head = 'pancreas_head' in l['subsegments']
        def rule(g):
            if all(g[v] == 0 for v in ('SMA', 'CHA', 'CA', 'PV/SMV')): return 'resectable'
            if head and (g['SMA'] > 180 or g['CA'] > 0 or g['IVC'] > 0): return 'unresectable'
            if not head and (g['SMA'] > 180 or g['CA'] > 180): return 'unresectable'
            if g['PV/SMV'] == 0 and g['CA'] == 0 and g['SMA'] < 180: return 'borderline resectable'
            return None
        shifted = [{k: (v if v == 0 else min(max(v + d, 1), 360)) for k, v in a.items()} for d in (-DEG_MARGIN, 0, DEG_MARGIN)]
        outcomes = {rule(g) for g in shifted}
        return rule(a), len(outcomes) == 1 and rule(a) is not None
    L = t.largest(g)
    if subtype == 'lesion volume measurement': return L['volume_cm3'], True
    if subtype == 'largest lesion diameter': return L['longest_diameter_mm'], True
    if subtype == 'largest lesion slice': return t.z_range(L), True
    if subtype == 'tumor organ HU difference':
        organ = L['organ']; return L['mean_hu'] - t.hu(organ), True
    if subtype == 'largest lesion attenuation':   # certain when the lesion differs clearly from its organ
        return {'hypo': 'hypoattenuating', 'iso': 'isoattenuating', 'hyper': 'hyperattenuating'}[L['attenuation']], \
            abs(L['mean_hu'] - t.hu(L['organ'])) > HU_MARGIN
    if subtype == 'largest lesion location':
        parts = L['subsegments']
        if g == 'liver':
            return 'hepatic segment ' + '/'.join(ROMAN[int(p.rsplit('_', 1)[1]) - 1] for p in sorted(parts, key=lambda p: int(p.rsplit('_', 1)[1]))), True
        if g == 'pancreas':
            order = ['pancreas_head', 'pancreas_body', 'pancreas_tail']
            return 'pancreatic ' + '/'.join(p.split('_')[1] for p in sorted(parts, key=order.index)), True
        return L['organ'].split('_')[1] + ' kidney', True
    if subtype == 'lesion type classification':
        return {'hcc': 'hepatocellular carcinoma', 'pdac': 'PDAC', 'pnet': 'PNET'}.get(L['type'], L['type']), True
    raise KeyError(subtype)


NUMBER_TOLERANCE = {  # subtype -> (relative, absolute): |generated - truth| <= max(rel * |truth|, abs)
    'organ volume measurement': (0.05, 1.0), 'organ aggregation': (0.05, 1.0),
    'lesion volume measurement': (0.25, 0.3), 'tumor burden percentage': (0.25, 0.1),
    'organ HU measurement': (0.0, 25.0), 'organ HU ratio': (0.0, 0.25), 'tumor organ HU difference': (0.0, 50.0),
    'largest lesion diameter': (0.15, 4.0), 'lesion counting': (0, 0), 'lesion count by location': (0, 0),
}


def test_every_subtype_is_generated_on_the_fixture_or_explained(records):
    seen = {r['question_subtype'] for r in records}
    # not defined on these phantoms: no colon lesion mask to look in for 'colon lesion existence' would still be
    # asked (the colon is segmented); portal hypertension needs spleen and segment volumes (always there)
    not_here = set(vqa.TAXONOMY) - seen
    assert not_here <= {'adjacent organ', 'pancreatic lesion resectability', 'inter-segment comparison',
                        'bilateral kidney asymmetry', 'pancreatic cyst resectability', 'pseudocyst determination'}, not_here
    assert len(seen) >= 36


def test_generated_answers_match_the_phantom_truth(cases, records):
    truths = {c.case_id: Truth(c) for c in cases}
    checked, bad = Counter(), []
    for r in records:
        name, slots = vqa.parse_question(r['question'])
        want, sure = truth_answer(truths[r['case_id']], name, slots)
        if want is None or not sure: continue
        kind = vqa.kind_of(name)
        if name == 'largest lesion slice':
            lo, hi = want
            ok = lo <= int(r['answer']) <= hi
        elif kind == 'number':
            rel, ab = NUMBER_TOLERANCE[name]
            ok = abs(float(r['answer']) - want) <= max(rel * abs(want), ab) + 1e-9
        elif kind == 'yesno':
            ok = r['answer'] == ('Yes' if want else 'No')
        else:
            ok = vqa.normalise(r['answer']) == vqa.normalise(want)
        checked[name] += 1
        if not ok: bad.append((r['case_id'], name, slots, r['answer'], want))
    assert not bad, '\n'.join(map(str, bad))
    assert len(checked) >= 30, sorted(checked)


def test_multiple_choice_options(records):
    for r in records:
        opts = r['options']
        assert len(opts) == 4 and len({vqa.normalise(o) for o in opts}) == 4, r
        assert [vqa.normalise(o) for o in opts].count(vqa.normalise(r['answer'])) == 1, r
        assert opts['ABCD'.index(r['correct_option'])] == r['answer']
        stem, shown = vqa.split_mc(r['multiple_choice_question'])
        assert stem == r['question'] and list(shown.values()) == opts
        if r['answer_type'] == 'number':   # distractors are numbers, and not negative unless the quantity can be
            vals = [float(o) for o in opts]
            assert vqa.SUBTYPES[r['question_subtype']].signed or min(vals) >= 0


def test_correct_letters_are_balanced(records, facts):
    c = Counter(r['correct_option'] for r in records)
    assert max(c.values()) - min(c.values()) <= 1, c
    many = vqa.generate_dataset(facts * 6, seed=3, progress=False)      # a larger set, one letter cycle
    c = Counter(r['correct_option'] for r in many)
    assert max(c.values()) - min(c.values()) <= 1, c


def test_determinism_by_seed(facts, records):
    again = vqa.generate_dataset(facts, seed=0, progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(records, sort_keys=True)
    other = vqa.generate_dataset(facts, seed=1, progress=False)
    assert [r['question'] for r in other] != [r['question'] for r in records]
    assert [r['answer'] for r in other if r['question_subtype'] == 'lesion counting'] == \
           [r['answer'] for r in records if r['question_subtype'] == 'lesion counting']
    # one case's questions do not depend on the other cases in the set
    alone = vqa.generate_questions(facts[1], seed=0)
    inset = [r for r in records if r['case_id'] == facts[1]['case_id']]
    assert [r['question'] for r in alone] == [r['question'] for r in inset]


def _all_template_questions():
    for name, st in vqa.SUBTYPES.items():
        for t in st.templates:
            keys = sorted({f.split('_')[0] for f in vqa.FIELD_RE.findall(t)})
            combos = [{}]
            for k in keys:
                combos = [dict(c, **{k: v}) for c in combos for v in vqa._slot_values(st, k) if v in vqa.FIELD_FORMS[k]]
            for slots in combos: yield name, slots, vqa.render(t, slots)


def test_every_template_parses_back_to_itself_only():
    n = 0
    for name, slots, text in _all_template_questions():
        hits = [nm for nm, rx in vqa._PARSERS if rx.match(text)]
        assert hits == [name], (text, hits)
        assert vqa.parse_question(text) == (name, slots)
        n += 1
    assert n > 150


def test_no_question_leaks_its_answer(records):
    for name, slots, text in _all_template_questions():
        assert not re.search(r'\d', text), text                      # no digits in any question
        assert not re.search(r'\b(yes|no)\b', text, re.I), text
    for r in records:
        q, a = vqa.normalise(r['question']), vqa.normalise(r['answer'])
        if r['answer_type'] == 'category':
            assert not re.search(r'(?<!\w)' + re.escape(a) + r'(?!\w)', q), (r['question'], r['answer'])


def test_scorer_reproduces_hand_computed_scores():
    R = [dict(qid='n0', question_subtype='lesion counting', answer='0', correct_option='A'),
         dict(qid='n1', question_subtype='organ volume measurement', answer='250.0', correct_option='B'),
         dict(qid='n2', question_subtype='organ HU measurement', answer='-20.0', correct_option='C'),
         dict(qid='n3', question_subtype='largest lesion diameter', answer='40.0', correct_option='D'),
         dict(qid='y1', question_subtype='splenomegaly detection', answer='Yes', correct_option='A'),
         dict(qid='y2', question_subtype='splenomegaly detection', answer='Yes', correct_option='B'),
         dict(qid='y3', question_subtype='splenomegaly detection', answer='No', correct_option='C'),
         dict(qid='y4', question_subtype='splenomegaly detection', answer='No', correct_option='D'),
         dict(qid='c1', question_subtype='splenomegaly grading', answer='mild', correct_option='A'),
         dict(qid='c2', question_subtype='splenomegaly grading', answer='normal', correct_option='B')]
    free = {'n0': '0', 'n1': '200 cm3', 'n2': '-23', 'n3': 'unknown',
            'y1': 'yes', 'y2': 'I cannot tell', 'y3': 'No.', 'y4': 'yes',
            'c1': 'Mild splenomegaly', 'c2': 'Normal'}
    s = vqa.score(R, free, 'free')
    q = s.questions.set_index('qid')
    # numbers: zero truth answered exactly; 200 vs 250 -> 0.8; -23 vs -20 -> 0.85; unparsable -> 0
    assert q.loc[['n0', 'n1', 'n2', 'n3'], 'score'].tolist() == pytest.approx([1.0, 0.8, 0.85, 0.0])
    assert q.loc[['n0', 'n1', 'n2', 'n3'], 'within_20%'].tolist() == [True, True, True, False]
    assert q.loc[['n0', 'n1', 'n2', 'n3'], 'within_10%'].tolist() == [True, False, False, False]
    sub = s.subtypes.set_index('subtype')
    yn = sub.loc['splenomegaly detection']
    assert (yn['score'], yn['sensitivity'], yn['specificity']) == pytest.approx((0.5, 0.5, 0.5))
    cat = sub.loc['splenomegaly grading']
    assert (cat['score'], cat['partial']) == pytest.approx((0.5, 1.0))
    cats = s.categories.set_index('category')['score']
    assert cats['recognition'] == pytest.approx(0.5)
    assert cats['measurement'] == pytest.approx((0.8 + 0.85) / 2)
    assert cats['visual reasoning'] == pytest.approx((1.0 + 0.0) / 2)      # counting 1.0, diameter 0.0
    assert cats['medical reasoning'] == pytest.approx(0.5)
    assert s.overall == pytest.approx((1 + 0.8 + 0.85 + 0 + 1 + 0 + 1 + 0 + 0 + 1) / 10)
    mc = vqa.score(R, {'n0': 'a', 'n1': 'b)', 'n2': '(C)', 'n3': 'The answer is d', 'y1': 'A. Yes',
                       'y2': 'no idea', 'y3': '', 'y4': 'C', 'c1': 'a lesion', 'c2': 'B'}, 'mc')
    assert mc.questions['score'].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    assert vqa.score(R, {}, 'mc').overall == 0.0                        # missing answers count as wrong


def test_tool_answerer_is_exact_with_given_masks(cases, records):
    tool = va.ToolAnswerer()
    for form in ('mc', 'free'):
        s = vqa.score(records, va.predict(tool, cases, records, form), form)
        assert s.overall == pytest.approx(1.0), s.subtypes[s.subtypes['score'] < 1]


def test_baselines_and_small_model(cases, records):
    train = [r for r in records if r['case_id'] != cases[0].case_id]
    test = [r for r in records if r['case_id'] == cases[0].case_id]
    chance = vqa.score(test, va.predict(va.ChanceAnswerer().fit(None, train), None, test, 'mc'), 'mc')
    assert 0.05 < chance.overall < 0.6
    model = va.VQAModelAnswerer(epochs=3, size=16).fit(cases, train)
    preds = va.predict(model, cases, test, 'mc')
    assert all(p in 'ABCD' and p for p in preds.values())
    free = va.predict(model, cases, test, 'free')
    for r in test:
        if r['answer_type'] == 'number': assert vqa.parse_number(free[r['qid']]) is not None
        if r['answer_type'] == 'yesno': assert free[r['qid']] in ('Yes', 'No')


def test_transformers_adapter_with_a_tiny_random_model(cases, records):
    model, proc = va.tiny_vlm(seed=0)
    vlm = va.HFVLMAnswerer(model, proc, max_new_tokens=4, name='tiny')
    few = records[:3]
    out = va.predict(vlm, cases, few, 'mc')
    assert set(out) == {r['qid'] for r in few} and all(isinstance(v, str) for v in out.values())
    vqa.score(few, out, 'mc')                                      # whatever it says can be scored


def test_transformers_adapter_loads_a_local_folder(tmp_path, cases):
    model, proc = va.tiny_vlm(seed=1)
    model.save_pretrained(tmp_path); proc.save_pretrained(tmp_path)
    vlm = va.HFVLMAnswerer.from_pretrained(str(tmp_path), max_new_tokens=3)
    a = vlm.answer(cases[2], 'Is there a lesion in the liver?')
    b = vlm.answer(cases[2], 'Is there a lesion in the liver?')
    assert isinstance(a, str) and a == b                                # greedy: deterministic


def vqa_cli(argv) -> int:
    "`abdomen-nb vqa ARGS` as the console script runs it: through `pipeline.main` once it routes `vqa` to"
    "`vqa_answerers`, else the same function with the entry point's error handling."
    from abdomen_nb import pipeline
    from abdomen_nb.core import AbdomenNBError
    if pipeline.SUBCOMMANDS['vqa'][0] == 'vqa_answerers': return pipeline.main(['vqa', *argv])
    try: return va.main_vqa(argv)
    except AbdomenNBError as e:
        print(f'abdomen-nb vqa: {type(e).__name__}: {e}'); return 1


def test_cli_end_to_end(tmp_path, cases):
    root = tmp_path / 'data'
    for i, c in enumerate(cases, start=1): write_case(c, root / f'BDMAP_{i:08d}')
    q = tmp_path / 'run' / 'q.jsonl'
    assert vqa_cli(['generate', str(root), '--out', str(q), '--fractions', '1', '1', '1']) == 0
    recs = vqa.read_jsonl(q)
    assert {r['split'] for r in recs} == {'train', 'validation', 'test'}
    assert len({r['split'] for r in recs if r['case_id'] == recs[0]['case_id']}) == 1
    for f in ('question', 'answer', 'multiple_choice_question', 'correct_option', 'organ', 'lesion', 'question_type',
              'question_subtype', 'spacing', 'shape', 'sex', 'age', 'scanner', 'phase'):
        assert f in recs[0]
    p = tmp_path / 'p.jsonl'
    assert vqa_cli(['answer', str(root), str(q), '--answerer', 'tool', '--split', 'all', '--out', str(p)]) == 0
    out = tmp_path / 's.json'
    assert vqa_cli(['score', str(q), str(p), '--json', str(out)]) == 0
    assert json.loads(out.read_text())['summary']['overall'] == pytest.approx(100.0)
    pm = tmp_path / 'pm.jsonl'
    assert vqa_cli(['answer', str(root), str(q), '--answerer', 'majority', '--out', str(pm)]) == 0
    assert vqa_cli(['score', str(q), str(pm), '--split', 'test']) == 0
    # errors say what is wrong
    assert vqa_cli(['score', str(tmp_path / 'missing.jsonl'), str(p)]) == 1
    bad = tmp_path / 'bad.jsonl'; bad.write_text('{"qid": 1}\nnot json\n')
    assert vqa_cli(['score', str(q), str(bad)]) == 1
    assert vqa_cli(['answer', str(root), str(q), '--split', 'nosuchsplit', '--out', str(tmp_path / 'x.jsonl')]) == 1


def test_hospital_split_holds_out_whole_hospitals(records):
    recs = [dict(r, hospital=r['case_id'][-1]) for r in records]
    out = vqa.assign_splits([dict(r) for r in recs], by='hospital', test_hospitals=[recs[0]['hospital']])
    test_h = {r['hospital'] for r in out if r['split'] == 'test'}
    assert test_h == {recs[0]['hospital']}
    assert not test_h & {r['hospital'] for r in out if r['split'] != 'test'}
    with pytest.raises(ValueError, match='not in the data'):
        vqa.assign_splits([dict(r) for r in recs], by='hospital', test_hospitals=['nowhere'])


def test_tool_answerer_with_a_mask_model(cases):
    "A 'model' that shrinks the spleen: the tool answers from the predicted masks, so the answer follows them."
    from scipy import ndimage
    shrink = lambda case: {'spleen': ndimage.binary_erosion(case.masks['spleen'], iterations=2)}
    tool = va.ToolAnswerer(model=shrink)
    q = 'What is the volume of the spleen in cm³?'
    given = float(va.ToolAnswerer().answer(cases[0], q))
    predicted = float(tool.answer(cases[0], q))
    assert tool.name == 'tool (predicted masks)' and predicted < 0.8 * given


def test_demo_stage(tmp_path, cases):
    import time
    root = tmp_path / 'data'
    for i, c in enumerate(cases, start=1): write_case(c, root / f'BDMAP_{i:08d}')
    t0 = time.perf_counter()
    page = va.demo_stage(AtlasDataset(root), tmp_path)
    took = time.perf_counter() - t0
    assert '<table' in page and 'tool (given masks)' in page and (tmp_path / 'questions.jsonl').exists()
    assert took < 120, took      # ~5 s on an idle 2-core machine; generous for a shared one
