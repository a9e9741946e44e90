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
    like = cases[0]   # with a label map's case: its orientation and origin, the grid's spacing
    gl = T.generate(PROMPT, model, seed=0, steps=5, labels=like)
    assert np.allclose(gl.affine[:3, 3], like.affine[:3, 3])
    assert np.allclose(np.sign(gl.affine[:3, :3]), np.sign(like.affine[:3, :3]))
    # the grid covers the case's field of view
    assert np.allclose(np.array(gl.shape) * gl.spacing, np.array(like.shape) * like.spacing)


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
