"""Chapter 42: Text2CT (text -> latent diffusion -> CT volume): shapes, determinism, guidance, label-map
conditioning, prompts from the phantom's truth, bad prompts, save/load and `abdomen-nb text2ct`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from abdomen_nb import text2ct as T
from abdomen_nb.core import AbdomenNBError, read_case, write_case, write_json
from abdomen_nb.phantom import make_case
from abdomen_nb.pipeline import main as cli

torch.set_num_threads(1)
TUMOR = [{'organ': 'liver', 'type': 'metastasis'}]
FAST = dict(ae_steps=20, ldm_steps=40)   # the logic, not the quality, is tested
PROMPT = 'Abdominal CT in the portal venous phase of a woman. There is a 4.0 cm hypoattenuating metastasis in the liver.'


@pytest.fixture(scope='module')
def cases():
    return [make_case(s, size='mini', tumors=TUMOR if s % 2 else 'none') for s in range(500, 504)]


@pytest.fixture(scope='module')
def model(cases):
    return T.train_text2ct(cases, T.text2ct_config(**FAST))


def test_output_shape_spacing_affine(model, cases):
    cfg = model.cfg
    g = T.generate(PROMPT, model, seed=0, steps=5)
    assert g.shape == cfg.shape and g.ct.dtype == np.float32
    assert np.allclose(g.spacing, cfg.spacing) and np.allclose(g.affine, np.diag([*cfg.spacing, 1.0]))
    assert -1000 <= g.ct.min() and g.ct.max() <= 1000
    assert g.meta['prompt'] == PROMPT and g.meta['seed'] == 0 and g.meta['guidance'] == cfg.guidance
    like = cases[0]   # with a label map's case: its orientation, centred on it, the grid's spacing
    gl = T.generate(PROMPT, model, seed=0, steps=5, labels=like)
    assert np.allclose(np.sign(gl.affine[:3, :3]), np.sign(like.affine[:3, :3]))
    # the grid keeps its spacing (up to rounding) and is centred on the case, so sizes on it are sizes in the body
    assert np.allclose(gl.spacing, cfg.spacing, rtol=0.05)
    centre = lambda a, shape: (a @ np.r_[(np.array(shape) - 1) / 2, 1])[:3]
    assert np.abs(centre(gl.affine, gl.shape) - centre(like.affine, like.shape)).max() < max(cfg.spacing)
    lab = T.to_grid(like, cfg)[1]
    ml = lambda m, a: m.sum() * abs(np.linalg.det(a[:3, :3])) / 1000
    assert abs(ml(lab == 2, gl.affine) / ml(like.masks['spleen'], like.affine) - 1) < 0.1   # the spleen's volume kept


def test_autoencoder_error_falls_with_training(cases):
    cfg = T.text2ct_config(**FAST)
    torch.manual_seed(0)
    m = T.Text2CT(cfg)
    x = T.training_set(cases, cfg)['x']
    with torch.no_grad(): before = float((m.ae(x)[0] - x).abs().mean())
    losses = T.train_autoencoder(m, x, steps=25)
    with torch.no_grad(): after = float((m.ae.reconstruct(x) - x).abs().mean())
    assert after < 0.7 * before, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert m.latent_scale.item() > 0 and m.latent_scale.item() != 1.0


def test_same_seed_same_volume_other_text_other_volume(model):
    a, b = T.generate(PROMPT, model, seed=3, steps=5), T.generate(PROMPT, model, seed=3, steps=5)
    assert np.array_equal(a.ct, b.ct)
    c = T.generate('CT scan of the abdomen of a man. No mass.', model, seed=3, steps=5)
    assert not np.array_equal(a.ct, c.ct)
    assert not np.array_equal(a.ct, T.generate(PROMPT, model, seed=4, steps=5).ct)


def test_guidance_zero_ignores_the_text(model):
    a = T.generate(PROMPT, model, seed=1, guidance=0, steps=5)
    b = T.generate('CT scan of the abdomen of a man. No mass.', model, seed=1, guidance=0, steps=5)
    assert np.array_equal(a.ct, b.ct)
    assert not np.array_equal(a.ct, T.generate(PROMPT, model, seed=1, guidance=1, steps=5).ct)


def test_label_map_changes_the_output_where_the_map_changes(model, cases):
    lab = T.to_grid(cases[0], model.cfg)[1]
    moved = lab.copy(); moved[moved == 1] = 0              # the liver taken out of the map
    a = T.generate(PROMPT, model, seed=2, labels=lab, steps=5)
    b = T.generate(PROMPT, model, seed=2, labels=moved, steps=5)
    d, changed = np.abs(a.ct - b.ct), lab != moved
    assert d[changed].mean() > 1.5 * d[~changed].mean(), (d[changed].mean(), d[~changed].mean())
    assert np.array_equal(a.labels['conditioning'], lab)
    assert not np.array_equal(a.ct, T.generate(PROMPT, model, seed=2, steps=5).ct)   # a map vs no map


def test_prompts_come_from_the_recorded_truth(cases):
    c = cases[1]
    truth = c.meta['truth']
    texts = {T.render_prompt(T.case_facts(c), np.random.default_rng(s)) for s in range(30)}
    assert len(texts) >= 10
    d_cm = round(truth['lesions'][0]['longest_diameter_mm'] / 10, 1)
    assert all(f'{d_cm} cm' in t and 'metastasis' in t and 'liver' in t for t in texts)
    ages = {int(m) for t in texts for m in re.findall(r'(\d+)-year-old', t)}
    assert ages == {truth['demographics']['age']}
    healthy = {T.render_prompt(T.case_facts(cases[0]), np.random.default_rng(s)) for s in range(30)}
    assert not any('metastasis' in t for t in healthy)


def test_bad_prompts_and_label_maps(model):
    for bad, msg in [('', 'empty'), ('   \n', 'empty'), (None, 'text'), (7, 'text'), ('liver ' * 400, 'at most')]:
        with pytest.raises(T.Text2CTError, match=msg): T.generate(bad, model, steps=2)
    with pytest.raises(T.Text2CTError, match='integer'): T.generate(PROMPT, model, labels=np.zeros((8, 8, 8), np.float32), steps=2)
    with pytest.raises(T.Text2CTError, match='Label values'): T.generate(PROMPT, model, labels=np.full((8, 8, 8), 99), steps=2)
    with pytest.raises(T.Text2CTError, match='preset'): T.text2ct_config('huge')
    with pytest.raises(T.Text2CTError, match='Unknown settings'): T.text2ct_config(steps=3)


def test_save_load_round_trip(model, tmp_path):
    out = T.save_text2ct(model, tmp_path / 'm')
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'weights.pt']
    sd = torch.load(out / 'weights.pt', weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    back = T.load_text2ct(out)
    assert np.array_equal(T.generate(PROMPT, back, seed=5, steps=4).ct, T.generate(PROMPT, model, seed=5, steps=4).ct)
    assert T.generate(PROMPT, out, seed=5, steps=4).meta['model'] == str(out)      # a folder works as the model
    with pytest.raises(AbdomenNBError, match='not empty'): T.save_text2ct(model, out)
    with pytest.raises(AbdomenNBError, match='weights.pt'):
        (tmp_path / 'half').mkdir(); (tmp_path / 'half' / 'config.json').write_text('{}'); T.load_text2ct(tmp_path / 'half')
    meta = json.loads((out / 'config.json').read_text()); meta['format'] = 99
    (out / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(AbdomenNBError, match='format'): T.load_text2ct(out)


def _tiny_bert(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    words = sorted({w.lower() for w in re.findall(r'\w+|[^\w\s]', PROMPT + ' CT scan of the abdomen man no mass liver')})
    vocab = {w: i for i, w in enumerate(['[UNK]', '[PAD]'] + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]')); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='[UNK]', pad_token='[PAD]', model_max_length=64)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_any_transformers_encoder_by_name(cases, tmp_path):
    name = _tiny_bert(tmp_path / 'bert')
    cfg = T.text2ct_config(text_encoder=name, text_dim=32, ae_steps=3, ldm_steps=3)
    e = T.encode_prompts([PROMPT, '', 'CT scan of the abdomen of a man.'], cfg)
    assert e.shape == (3, 1, 32) and float(e[1].abs().sum()) == 0 and abs(float(e[0].norm()) - 1) < 1e-5
    assert not torch.allclose(e[0], e[2])
    m = T.train_text2ct(cases[:2], cfg)
    assert T.generate(PROMPT, m, seed=0, steps=2).shape == cfg.shape
    with pytest.raises(T.Text2CTError, match='at most 64'): T.check_prompt('liver ' * 70, cfg)
    with pytest.raises(T.Text2CTError, match='text_dim'): T.encode_prompts([PROMPT], T.text2ct_config(text_encoder=name))
    with pytest.raises(T.Text2CTError, match='Cannot load'): T.encode_prompts([PROMPT], T.text2ct_config(text_encoder=str(tmp_path / 'none')))


def test_cli_train_and_generate(cases, tmp_path, capsys):
    root = tmp_path / 'ds'
    for i, c in enumerate(cases[:3]):
        d = write_case(c, root / f'BDMAP_{i + 1:08d}')
        write_json(c.meta['truth'], d / 'truth.json')
    model = tmp_path / 'model'
    assert cli(['text2ct', 'train', str(root), '--out', str(model), '--ae-steps', '3', '--ldm-steps', '3']) == 0
    assert (model / 'weights.pt').exists()
    assert cli(['text2ct', 'train', str(root), '--out', str(model)]) == 1                  # no silent overwrite
    assert 'not empty' in capsys.readouterr().err
    out = tmp_path / 'gen' / 'BDMAP_T0000001'
    args = ['text2ct', 'generate', PROMPT, '--model', str(model), '--out', str(out), '--seed', '4', '--guidance', '2', '--steps', '3']
    assert cli(args) == 0
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['prompt'] == PROMPT and meta['seed'] == 4 and meta['guidance'] == 2.0 and meta['model'] == str(model)
    g = read_case(out)
    assert g.shape == T.text2ct_config().shape
    before = (out / 'ct.nii.gz').read_bytes()
    assert cli(args) == 1 and 'already holds' in capsys.readouterr().err
    assert (out / 'ct.nii.gz').read_bytes() == before
    assert cli(args[:-2] + ['--labels', str(root / 'BDMAP_00000001'), '--out', str(tmp_path / 'gen2'), '--steps', '3']) == 0
    assert json.loads((tmp_path / 'gen2' / 'meta.json').read_text())['labels'] is not None
    assert cli(['text2ct', 'generate', '  ', '--model', str(model), '--out', str(tmp_path / 'g3')]) == 1
    assert 'empty' in capsys.readouterr().err
    assert cli(['text2ct', 'generate', PROMPT, '--model', str(tmp_path / 'nope'), '--out', str(tmp_path / 'g4')]) == 1
    assert 'config.json' in capsys.readouterr().err
    (tmp_path / 'notruth' / 'BDMAP_00000001').mkdir(parents=True)
    write_case(cases[0], tmp_path / 'notruth' / 'BDMAP_00000001', overwrite=True)
    assert cli(['text2ct', 'train', str(tmp_path / 'notruth'), '--out', str(tmp_path / 'm2')]) == 1
    assert 'prompt.txt' in capsys.readouterr().err


@pytest.mark.parametrize('scheduler', ['ddpm', 'rflow'])
def test_sampler_lands_on_the_target_of_an_exact_model(scheduler, monkeypatch):
    """A U-Net that knows the answer z* (the clean latent for DDPM 'sample', the exact velocity for the
    rectified flow) must be sampled onto z*: the timesteps run the right way and each step moves the right way."""
    cfg = T.text2ct_config(scheduler=scheduler)
    m = T.Text2CT(cfg).eval()
    target = torch.randn((1, *cfg.latent_shape), generator=torch.Generator().manual_seed(9))
    def exact(x, t, labels_ch, context):
        if scheduler == 'ddpm': return target.expand_as(x)
        s = (t.float() / cfg.timesteps).view(-1, 1, 1, 1, 1)        # x_t = (1 - s) z* + s noise, so v = z* - noise = (z* - x_t) / s
        return (target - x) / s.clamp_min(1e-6)
    monkeypatch.setattr(m, 'forward', exact)
    ctx = T.encode_prompts([PROMPT], cfg)
    for steps in (3, 10):
        z = T.sample_latents(m, ctx, m.label_channels(None, 1), seed=0, guidance=3.0, steps=steps)
        assert torch.allclose(z, target, atol=1e-3), (scheduler, steps, float((z - target).abs().max()))


def test_rflow_trains_and_keeps_the_guarantees(cases):
    cfg = T.text2ct_config(scheduler='rflow', **FAST)
    m = T.train_text2ct(cases, cfg)
    assert np.mean(m.history['ldm'][-10:]) < np.mean(m.history['ldm'][:10])
    a, b = T.generate(PROMPT, m, seed=1, steps=4), T.generate(PROMPT, m, seed=1, steps=4)
    assert np.array_equal(a.ct, b.ct) and a.shape == cfg.shape
    g0 = [T.generate(t, m, seed=1, guidance=0, steps=4).ct for t in (PROMPT, 'CT scan of the abdomen of a man. No mass.')]
    assert np.array_equal(*g0) and not np.array_equal(a.ct, g0[0])
    assert T.text2ct_config('published').scheduler == 'rflow'
    with pytest.raises(T.Text2CTError, match='scheduler'): T.text2ct_config(scheduler='ddim')


def test_every_phantom_phase_reaches_the_prompt():
    from abdomen_nb.phantom import PHASES
    facts = dict(sex='F', age=50, enlarged=[], lesions=[])
    for ph in PHASES:
        t = T.render_prompt({**facts, 'phase': ph}, np.random.default_rng(0), drop=0)
        assert any(w in t for w in T.PHASE_WORDS[ph]), (ph, t)
    c = make_case(7, size='mini', phase='portal venous', tumors='none')
    for recorded in ('portal venous', 'portal_venous', 'venous', 'PORTAL VENOUS'):
        c.meta['truth'] = {**c.meta['truth'], 'phase': recorded}
        assert T.case_facts(c)['phase'] == 'portal venous', recorded


def test_cohort_is_balanced_by_its_recorded_truth():
    cs = T.cohort(range(600, 608))
    t = [c.meta['truth'] for c in cs]
    phases = [x['phase'] for x in t]
    assert sorted(phases) == sorted(['non-contrast', 'arterial', 'portal venous', 'delayed'] * 2)
    tumor = [bool(x['lesions']) for x in t]
    spleen = [bool(x['organs']['spleen']['enlarged']) for x in t]
    assert sum(tumor) == 4 and sum(spleen) == 4
    for ph in set(phases):                      # each phase: one case with and one without a tumor, one enlarged spleen
        i = [k for k, p in enumerate(phases) if p == ph]
        assert sorted(tumor[k] for k in i) == [False, True] and sorted(spleen[k] for k in i) == [False, True]
    sizes = sorted(round(x['lesions'][0]['longest_diameter_mm'] / 10) for x in t if x['lesions'])
    assert sizes == [3, 3, 7, 7], sizes                # the two sizes of the design, twice each


def test_judge_reads_grid_cases_and_tables_score_agreement():
    cfg = T.text2ct_config()
    cs = T.cohort(range(610, 614))
    g = T.grid_case(cs[0], cfg)
    assert g.shape == cfg.shape and np.allclose(g.spacing, cfg.spacing, rtol=0.05) and 'liver' in g.masks
    assert 'liver_lesion' in T.grid_case(T.cohort(range(610, 615))[4], cfg).masks
    thr = T.phase_threshold([T.grid_case(c, cfg) for c in cs])          # cases 0 (non-contrast) and 1 (arterial)
    aorta = [float(T.grid_case(c, cfg).ct[T.grid_case(c, cfg).masks['aorta']].mean()) for c in cs[:2]]
    assert min(aorta) < thr < max(aorta)
    with pytest.raises(T.Text2CTError, match='both'): T.phase_threshold([g])
    judge = T.train_judge(cs[:2], cfg, iterations=20)
    r = T.judge_volume(g, judge)
    assert set(r) >= {'organs_found', 'spleen_cm3', 'spleen_enlarged', 'liver_lesion', 'aorta_hu'}
    a = T.read_attributes(r, thr)
    assert a['phase'] in ('arterial', 'non-contrast') and a['size_band'] in (None, '< 2 cm', '2-5 cm', '> 5 cm')
    d = T.conditioning_dice([g], [T.to_grid(cs[0], cfg)[1]], judge)
    assert d.shape == (1, 9) and ((d >= 0) & (d <= 1)).all().all()
    exp = [{'x': True}, {'x': False}] * 5
    tab = T.agreement_table(exp, exp, attributes=('x',))
    assert tab.loc['x', 'agreement'] == 1.0 and 0.4 < tab.loc['x', 'random_text'] < 0.65
    flipped = T.agreement_table(exp, [{'x': not e['x']} for e in exp], attributes=('x',))
    assert flipped.loc['x', 'agreement'] == 0.0
    p = T.agreement_prompts()
    assert len(p) == 12 and all(('metastasis' in q['text']) == q['liver_lesion'] for q in p)
    assert all(('arterial' in q['text']) == (q['phase'] == 'arterial') for q in p)
