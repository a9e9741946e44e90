"""DeepTumorVQA interoperability and the files `abdomen-nb vqa` writes.

* `vqa generate --format deeptumorvqa` is fed through a copy of the field handling of DeepTumorVQA's published
  code (its `load_qa`, its prompt builder and its scorer's `aggregate`), written again below from what that
  code reads (github.com/Schuture/DeepTumorVQA, src/deeptumorvqa/data/loader.py, data/prompt.py,
  eval/metrics.py): the file loads, every prompt builds, and their scorer and ours agree on the same answers.
* `vqa score` reads their prediction records and their evaluator's results file; unknown and repeated question
  ids give a warning with the count.
* `vqa score --json` is strict JSON (no NaN token): an undefined metric is null.
* `vqa generate` over a folder goes through the batch runner: manifest.csv, resume, a failed case recorded and
  left out, and the facts files give the same questions as measuring in memory.
"""
from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from abdomen_nb import vqa
from abdomen_nb import vqa_answerers as va
from abdomen_nb.core import AtlasDataset, write_case

SEEDS = (2000, 2001, 2002)


def vqa_cli(argv) -> int:
    "`abdomen-nb vqa ARGS` as the console script runs it (see tests/test_vqa.py)."
    from abdomen_nb import pipeline
    from abdomen_nb.core import AbdomenNBError
    if pipeline.SUBCOMMANDS['vqa'][0] == 'vqa_answerers': return pipeline.main(['vqa', *argv])
    try: return va.main_vqa(argv)
    except AbdomenNBError as e:
        print(f'abdomen-nb vqa: {type(e).__name__}: {e}'); return 1


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    from abdomen_nb.phantom import make_case
    root = tmp_path_factory.mktemp('vqa_interop') / 'data'
    for i, seed in enumerate(SEEDS, start=1): write_case(make_case(seed), root / f'BDMAP_{i:08d}')
    return root


# ---------------------------------------------------------------------------------------------------------
# DeepTumorVQA's field handling, written again from what its code reads.

THEIR_NUMERIC = {'organ volume measurement', 'organ HU measurement', 'lesion volume measurement', 'organ HU ratio',
                 'tumor burden percentage', 'largest lesion diameter', 'largest lesion slice', 'lesion counting',
                 'lesion count by location', 'organ aggregation', 'tumor organ HU difference'}
THEIR_BINARY = {'pancreatic lesion existence', 'liver lesion existence', 'kidney lesion existence',
                'kidney tumor existence', 'kidney cyst existence', 'colon lesion existence', 'PDAC existence',
                'PNET existence', 'lesion outlier', 'organ enlargement', 'pancreatic steatosis',
                'pancreatic cyst resectability', 'pseudocyst determination', 'splenomegaly detection',
                'portal hypertension assessment'}
THEIR_CATEGORICAL = {'liver lesion clustering', 'kidney volume comparison', 'largest lesion attenuation',
                     'largest lesion location', 'inter-segment comparison', 'adjacent organ',
                     'bilateral kidney asymmetry', 'multi-organ lesion burden comparison', 'fatty liver',
                     'hepatic steatosis grading', 'pancreatic tumor staging', 'pancreatic lesion resectability',
                     'PDAC vs PNET classification', 'lesion type classification', 'splenomegaly grading',
                     'renal mass characterization'}
THEIR_TYPES = ['recognition', 'measurement', 'visual reasoning', 'medical reasoning']


def their_answer_type(subtype):
    return 'numeric' if subtype in THEIR_NUMERIC else 'binary' if subtype in THEIR_BINARY else 'categorical'


def their_load_qa(root: Path) -> list:
    "load_qa('benchmark', root): the 'questions' list of benchmark/test_qa.json."
    with open(root / 'benchmark' / 'test_qa.json') as f:
        return json.load(f)['questions']


def their_prompt(q: dict, fmt: str) -> str:
    "The fields their prompt builder reads, in its order (2D-image mode)."
    parts = ['The image is a single axial CT slice ...']
    pat = [f'{k}={q[k]}' for k in ('sex', 'age', 'scanner', 'contrast') if q.get(k)]
    if pat: parts.append(f"Patient: {', '.join(pat)}.")
    if their_answer_type(q.get('question_subtype', '')) == 'numeric' and q.get('spacing'):
        parts.append(f"Voxel spacing (mm): {q.get('spacing')}.  Volume shape: {q.get('shape')}.")
    parts.append(q['mc_question'] if fmt == 'mc' else q['question'])
    return '\n'.join(parts)


def _strip_think(t):
    return re.sub(r'<think>.*$', '', re.sub(r'<think>.*?</think>', '', t, flags=re.S), flags=re.S).strip()


def their_letter(t):
    s = _strip_think(t).strip().upper()
    if s and s[0] in 'ABCD': return s[0]
    m = re.search(r'\b([A-D])\b', s)
    return m.group(1) if m else ''


def their_number(t):
    m = re.search(r'-?[\d]+\.?\d*', str(t).strip())
    return float(m.group()) if m else None


def their_binary(t):
    s = str(t).strip().lower()
    if s.startswith('yes'): return 'yes'
    if s.startswith('no'): return 'no'
    if re.search(r'\byes\b', s): return 'yes'
    if re.search(r'\bno\b', s): return 'no'
    return ''


def their_norm(t):
    return re.sub(r'\s+', ' ', re.sub(r'[^\w\s\-]', '', str(t).strip().lower()))


def their_question_score(atype, pred, gt, fmt):
    if fmt == 'mc': return float(their_letter(pred) == gt.strip().upper())
    if atype == 'numeric':
        g, p = their_number(gt), their_number(_strip_think(pred))
        if p is None: return 0.0
        return float(p == 0) if g == 0 else max(0.0, 1 - abs(p - g) / abs(g))
    if atype == 'binary':
        p, g = their_binary(_strip_think(pred)), their_binary(gt)
        return float(p == g and bool(p))
    return float(their_norm(gt) == their_norm(_strip_think(pred)))


def their_aggregate(predictions: list, index: dict, fmt: str) -> dict:
    "Their aggregate(): qid -> question; pred_answer or raw_output; per subtype, per question_type, micro overall."
    per_sub = defaultdict(list)
    for r in predictions:
        if r['qid'] not in index: continue          # unknown ids: skipped silently by their scorer
        q = index[r['qid']]
        pred = r.get('pred_answer') or r.get('raw_output') or ''
        gt = q['correct_option'] if fmt == 'mc' else q['answer']
        per_sub[q['question_subtype']].append(their_question_score(their_answer_type(q['question_subtype']),
                                                                   str(pred), str(gt), fmt))
    by_type = defaultdict(list)
    for st, v in per_sub.items():
        t = next(q['question_type'] for q in index.values() if q['question_subtype'] == st)
        by_type[t] += v
    allq = [x for v in per_sub.values() for x in v]
    return {'overall': sum(allq) / len(allq), 'by_super_type': {t: sum(v) / len(v) for t, v in by_type.items()}}


# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def dtv_root(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp('dtv')
    out = root / 'benchmark' / 'test_qa.json'
    assert vqa_cli(['generate', str(dataset), '--out', str(out), '--format', 'deeptumorvqa']) == 0
    return root


def test_export_loads_and_prompts_with_their_field_handling(dtv_root, dataset):
    qs = their_load_qa(dtv_root)
    ours = vqa.generate_dataset(AtlasDataset(dataset), seed=0, progress=False)
    assert [q['qid'] for q in qs] == [r['qid'] for r in ours] and len(qs) > 100
    for q, r in zip(qs, ours):
        for k in vqa.DEEPTUMORVQA_FIELDS: assert k in q, k
        assert q['image_id'] == r['case_id'] and q['mc_question'] == r['multiple_choice_question']
        assert q['contrast'] == r['phase'] and q['correct_option'] in 'ABCD'
        assert q['question_type'] in THEIR_TYPES
        assert q['question_subtype'] in THEIR_NUMERIC | THEIR_BINARY | THEIR_CATEGORICAL
        # answer kinds agree with their table, so their free-form scorer picks the right metric
        assert their_answer_type(q['question_subtype']) == {'number': 'numeric', 'yesno': 'binary',
                                                            'category': 'categorical'}[r['answer_type']]
        assert re.fullmatch(r'\[[\d.]+ [\d.]+ [\d.]+\]', q['spacing']), q['spacing']
        assert q['shape'] == '(' + ', '.join(map(str, r['shape'])) + ')'
        for fmt in ('mc', 'freeform'):
            prompt = their_prompt(q, fmt)
            assert f"contrast={r['phase']}" in prompt
            if r['answer_type'] == 'number': assert q['spacing'] in prompt and q['shape'] in prompt
    assert len({q['question_subtype'] for q in qs}) >= 30


def test_their_scorer_and_ours_agree(dtv_root, dataset, tmp_path):
    qfile = dtv_root / 'benchmark' / 'test_qa.json'
    index = {q['qid']: q for q in their_load_qa(dtv_root)}
    for answerer, form in [('tool', 'mc'), ('chance', 'mc'), ('majority', 'free')]:
        ours = tmp_path / f'{answerer}_{form}.jsonl'
        assert vqa_cli(['answer', str(dataset), str(qfile), '--answerer', answerer, '--form', form, '--split', 'all',
                        '--out', str(ours)]) == 0
        preds = vqa.read_predictions(ours)
        theirs = their_aggregate([{'qid': k, 'pred_answer': v} for k, v in preds.items()], index,
                                 'mc' if form == 'mc' else 'freeform')
        mine = vqa.score(vqa.read_questions(qfile), preds, form)
        assert mine.overall == pytest.approx(theirs['overall'], abs=1e-12), answerer
        for c, s in zip(mine.categories['category'], mine.categories['score']):
            assert s == pytest.approx(theirs['by_super_type'][c], abs=1e-12), (answerer, c)
        if answerer == 'tool': assert theirs['overall'] == 1.0
    # their prediction records go into `vqa score` as they are
    tp = tmp_path / 'their_preds.json'
    tp.write_text(json.dumps({'n_processed': len(preds), 'results': [
        {'qid': k, 'image_id': index[k]['image_id'], 'raw_output': v, 'pred_answer': v, 'answer': index[k]['answer']}
        for k, v in preds.items()]}))
    js = tmp_path / 's.json'
    assert vqa_cli(['score', str(qfile), str(tp), '--form', 'free', '--json', str(js)]) == 0
    assert json.loads(js.read_text())['summary']['overall'] == pytest.approx(100 * mine.overall)


def test_prediction_fields_and_warnings(tmp_path):
    R = [dict(qid='q1', question_subtype='lesion counting', answer='2', correct_option='B'),
         dict(qid='q2', question_subtype='splenomegaly detection', answer='No', correct_option='A'),
         dict(qid='q3', question_subtype='splenomegaly grading', answer='normal', correct_option='C')]
    p = tmp_path / 'p.jsonl'
    p.write_text('\n'.join(json.dumps(r) for r in [
        {'qid': 'q1', 'pred_answer': '', 'raw_output': 'B'},            # empty pred_answer: raw_output is used
        {'qid': 'q2', 'pred_answer': 'A', 'answer': 'No'},              # their records carry the truth as 'answer'
        {'qid': 'q2', 'pred_answer': 'D'},                              # repeated id: the first answer counts
        {'qid': 'q3', 'prediction': 'C'},                               # ours
        {'qid': 'zz1', 'pred_answer': 'A'}, {'qid': 'zz2', 'pred_answer': 'A'}]) + '\n')   # unknown ids
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        preds = vqa.read_predictions(p)
        s = vqa.score(R, preds, 'mc')
    msgs = [str(x.message) for x in w]
    assert preds['q1'] == 'B' and preds['q2'] == 'A' and preds['q3'] == 'C'
    assert any('1 prediction(s) repeat' in m for m in msgs), msgs
    assert any(m.startswith('2 prediction(s) for question ids not in the questions') for m in msgs), msgs
    assert s.overall == 1.0
    # a DeepTumorVQA JSON list and a {qid: answer} object read too
    (tmp_path / 'l.json').write_text(json.dumps([{'qid': 'q1', 'pred_answer': 'b'}]))
    assert vqa.read_predictions(tmp_path / 'l.json') == {'q1': 'b'}
    (tmp_path / 'o.json').write_text(json.dumps({'q1': 'B', 'q2': None}))
    assert vqa.read_predictions(tmp_path / 'o.json') == {'q1': 'B', 'q2': ''}


def _reject_constant(name):
    raise ValueError(f'{name} is not JSON')


def test_score_json_is_strict_json(tmp_path, capsys):
    R = [dict(qid='y1', question_subtype='splenomegaly detection', answer='No', correct_option='A', answer_type='yesno'),
         dict(qid='c1', question_subtype='splenomegaly grading', answer='mild', correct_option='B', answer_type='category')]
    q = vqa.write_jsonl(R, tmp_path / 'q.jsonl')
    p = vqa.write_jsonl([{'qid': 'y1', 'prediction': 'no'}, {'qid': 'c1', 'prediction': 'mild'}], tmp_path / 'p.jsonl')
    out = tmp_path / 's.json'
    assert vqa_cli(['score', str(q), str(p), '--form', 'free', '--json', str(out)]) == 0
    text = out.read_text()
    assert not re.search(r'[:\[,]\s*-?(NaN|Infinity)\b', text)
    j = json.loads(text, parse_constant=_reject_constant)
    row = next(r for r in j['subtypes'] if r['subtype'] == 'splenomegaly detection')
    assert row['sensitivity'] is None and row['specificity'] == 1.0      # no 'yes' truth: undefined, not 0
    assert 'not defined' in j['null_means']
    assert 'n/a (null in --json)' in capsys.readouterr().out           # the printed table says what n/a means
    # an empty question set scores NaN overall: null as well
    empty = vqa.score([], {}, 'mc')
    assert json.loads(json.dumps(empty.to_json(), allow_nan=False))['summary']['overall'] is None


def test_generate_uses_the_batch_runner(dataset, tmp_path):
    import shutil
    from abdomen_nb.batch import read_manifest
    root = tmp_path / 'data'
    shutil.copytree(dataset, root)
    broken = root / 'BDMAP_00000002' / 'ct.nii.gz'
    good = broken.read_bytes()
    broken.write_bytes(b'not a nifti file')
    out = tmp_path / 'run' / 'questions.jsonl'
    assert vqa_cli(['generate', str(root), '--out', str(out)]) == 1          # one case failed: status 1
    m = read_manifest(tmp_path / 'run')
    assert dict(zip(m['case_id'], m['status'])) == {'BDMAP_00000001': 'done', 'BDMAP_00000002': 'failed',
                                                   'BDMAP_00000003': 'done'}
    assert m.set_index('case_id').loc['BDMAP_00000002', 'error']
    assert {r['case_id'] for r in vqa.read_jsonl(out)} == {'BDMAP_00000001', 'BDMAP_00000003'}
    broken.write_bytes(good)                                                  # fixed: a rerun measures only that case
    assert vqa_cli(['generate', str(root), '--out', str(out)]) == 0
    m = read_manifest(tmp_path / 'run')
    assert m['status'].tolist() == ['skipped', 'done', 'skipped']
    # the facts files give exactly the questions measured in memory
    assert vqa.read_jsonl(out) == json.loads(json.dumps(vqa.generate_dataset(AtlasDataset(root), seed=0, progress=False)))
    # a damaged facts file is not 'complete': it is measured again
    (tmp_path / 'run' / 'vqa_facts' / 'BDMAP_00000003.json').write_text('{"case_id": "BDMAP_00000003"')
    assert vqa_cli(['generate', str(root), '--out', str(out)]) == 0
    assert read_manifest(tmp_path / 'run')['status'].tolist() == ['skipped', 'skipped', 'done']
