"""Chapter 41 (abdomen_nb.textomorph): config, contrastive loss, training, sampling, synthesis, save/load, CLI.

What a tumor should look like is checked against the input case (its organ's HU, which voxels are organ)
and the text, never against the code under test.
"""
from __future__ import annotations

import json, math, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from abdomen_nb.core import AbdomenNBError, MissingFileError, OutputExistsError, read_case, resample_case, write_case
from abdomen_nb.phantom import make_case
from abdomen_nb import textomorph as tm
from abdomen_nb.synth import SynthesisError


@pytest.fixture(scope='module')
def healthy():
    return make_case(31, tumors='none')


@pytest.fixture(scope='module')
def model():
    return tm.pretrained()


@pytest.fixture(scope='module')
def pairs():
    return tm.make_pairs([make_case(s, tumors='none') for s in (32, 33)], 24, tm.textomorph_config(), seed=1)


def test_published_numbers():
    c = tm.textomorph_config('published')
    assert (c.crop, c.latent, c.latent_channels, c.timesteps, c.schedule, c.ddim_steps, c.lr, c.ema, c.temperature) == \
        (96, True, 8, 200, 'cosine', 50, 1e-4, 0.995, 0.07)
    assert c.crop // 2 ** (len(c.ae_channels) - 1) == 24
    with pytest.raises(AbdomenNBError, match='Unknown TextoMorph config field'): tm.textomorph_config(crops=3)
    with pytest.raises(AbdomenNBError, match='divisible'): tm.textomorph_config('published', crop=18)
    with pytest.raises(AbdomenNBError, match='one entry per U-Net level'): tm.textomorph_config(channels=(8, 16, 32))


def test_info_nce_closed_form():
    a, n = torch.tensor([[1., 0.]]), torch.tensor([[0., 1.]])
    assert math.isclose(float(tm.info_nce(a, a, n, torch.tensor([[True]]))), math.log(1 + math.exp(-1 / 0.07)), abs_tol=2e-6)
    assert math.isclose(float(tm.info_nce(a, a, n, torch.tensor([[True]]), tau=1.0)), math.log(1 + math.exp(-1)), rel_tol=1e-5)
    # two rows: row 0 has negative row 1, row 1 has none (it does not count)
    anc = torch.tensor([[1., 0.], [0., 1.]]); neg = torch.tensor([[False, True], [False, False]])
    assert math.isclose(float(tm.info_nce(anc, anc, anc, neg, tau=0.5)), math.log(1 + math.exp(-2)), rel_tol=1e-5)
    assert float(tm.info_nce(anc, anc, anc, torch.zeros(2, 2, dtype=bool))) == 0.0
    x = torch.tensor([[1., 0.]], requires_grad=True)      # differentiable: the anchor is pushed toward its positive
    tm.info_nce(x, torch.tensor([[0.6, 0.8]]), torch.tensor([[1., 0.]]), torch.tensor([[True]])).backward()
    assert x.grad[0, 1] < 0


def test_key_words_and_negatives():
    assert tm.key_words('Infiltrative heterogeneously enhancing mass with washout in a cirrhotic liver') == \
        {'ill-defined', 'heterogeneous enhancement', 'washout', 'cirrhosis'}
    assert tm.dissimilar(tm.key_words('a well-defined hypodense cyst'), tm.key_words('an ill-defined hyperdense mass'))
    assert not tm.dissimilar(tm.key_words('a hypodense cyst'), tm.key_words('a hypodense mass'))
    assert not tm.dissimilar(frozenset(), tm.key_words('a cyst'))


def test_texts_say_what_is_drawn(pairs):
    from abdomen_nb.synth import parse_tumor_text
    for t, a in zip(pairs['texts'], pairs['attributes']):
        s = parse_tumor_text(t, encoder=False)[0]
        assert s.organ == a['organ'].split('_')[0] and abs(s.diameter_mm - a['diameter_mm']) < 0.051
        if a['pathology'] == 'cyst': assert 'cyst' in tm.key_words(t)
    hyper = np.array([a['attenuation'] == 'hyper' for a in pairs['attributes']])
    d = tm.descriptor(pairs['x0'], pairs['mask'])[:, 0].numpy()
    cyst = np.array([a['pathology'] == 'cyst' for a in pairs['attributes']])
    # the drawn look is in the patches: hyper brighter than hypo (the ring can be fat next to a thin organ), cysts dark
    assert d[hyper].mean() > d[~hyper].mean() + 1.0 and (d[cyst] < 0).all()


def test_patch_geometry_is_in_mm():
    cfg = tm.textomorph_config()
    m = np.zeros((200, 200, 60), bool); m[90:115, 90:110, 28:33] = True       # 25 x 20 x 5 voxels
    b = tm.patch_box(m, (0.8, 0.8, 1.0), cfg)
    assert b['side'] == max(48.0, 1.6 * 20.0)
    b2 = tm.patch_box(m, (2.0, 2.0, 1.0), cfg)
    assert math.isclose(b2['side'], 1.6 * 50.0) and math.isclose(b2['step'], 80.0 / 16)
    with pytest.raises(SynthesisError, match='empty'): tm.patch_box(np.zeros((4, 4, 4), bool), (1, 1, 1), cfg)


def test_training_lowers_the_loss(pairs):
    net = tm.train_textomorph(pairs, tm.textomorph_config(steps=40, batch=8), log_every=5)
    l1 = [h['l1'] for h in net.history]
    assert len(l1) == 8 and np.mean(l1[-2:]) < np.mean(l1[:2])   # batch losses are noisy: compare pairs of logs
    assert all(np.isfinite(h['nce']) for h in net.history)


def test_latent_path_trains_both_stages(pairs):
    cfg = tm.textomorph_config('published', crop=16, ae_channels=(8, 8, 8), channels=(8, 16), attention_levels=(False, True), norm_num_groups=4,
                               num_head_channels=8, ae_steps=2, steps=2, batch=4)
    net = tm.train_textomorph(pairs, cfg, log_every=1)
    assert 'ae_loss' in net.history[0] and net.history[-1]['step'] == 2
    z = net.encode(pairs['x0'][:2]); assert z.shape == (2, 8, 4, 4, 4)
    s = tm.sample(net, pairs['x0'][:2], pairs['region'][:2], pairs['mask'][:2], tm.encode_texts(pairs['texts'][:2]), steps=2)
    assert s.shape == (2, 1, 16, 16, 16) and s.abs().max() <= 1


def test_sampling_is_seeded_and_text_conditioned(model, pairs):
    args = (pairs['x0'][:2], pairs['region'][:2], pairs['mask'][:2])
    e = tm.encode_texts(['A 3 cm hypodense mass in the liver.'] * 2)
    a, b = tm.sample(model, *args, e, seed=3, steps=6), tm.sample(model, *args, e, seed=3, steps=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, tm.sample(model, *args, e, seed=4, steps=6))
    assert not torch.equal(a, tm.sample(model, *args, tm.encode_texts(['A 3 cm hyperdense mass in the liver.'] * 2), seed=3, steps=6))


def test_guidance_zero_ignores_the_text(model, pairs):
    args = (pairs['x0'][:2], pairs['region'][:2], pairs['mask'][:2])
    hypo, hyper = (tm.encode_texts([f'A 3 cm {w} mass in the liver.'] * 2) for w in ('hypodense', 'hyperdense'))
    a, b = (tm.sample(model, *args, e, seed=3, steps=4, guidance=0.0) for e in (hypo, hyper))
    assert torch.allclose(a, b, atol=1e-6)                       # w = 0: the null-context prediction alone
    c = tm.sample(model, *args, hyper, seed=3, steps=4, guidance=3.0)
    assert not torch.allclose(b, c, atol=1e-3)


def test_synthesize_paints_only_the_tumor(healthy, model):
    t = 'A 3.0 cm hyperattenuating mass in the liver.'
    syn = tm.synthesize(healthy, t, seed=2, model=model)
    e = syn.meta['truth']['lesions'][-1]
    assert e['source'] == 'abdomen_nb.textomorph' and e['textomorph']['text'] == t
    assert abs(e['longest_diameter_mm'] - 30) <= 4.5
    ch = syn.ct != healthy.ct
    assert not (ch & ~healthy.masks['liver']).any()
    r = [int(3.0 * e['textomorph']['blend_sigma_mm'] / s + 0.5) + 1 for s in syn.spacing]
    near = ndimage.binary_dilation(syn.masks['liver_lesion'], np.ones([2 * k + 1 for k in r], bool))
    assert not (ch & ~near).any() and ch.any()
    assert healthy.meta['truth'].get('lesions', []) == [] and 'liver_lesion' not in healthy.masks or not healthy.masks['liver_lesion'].any()
    lesion = syn.labels['lesion_instances'] == e['id']
    assert math.isclose(e['mean_hu'], float(syn.ct[lesion].mean()), abs_tol=0.01)


def test_full_resolution_spacing(model):
    c = resample_case(make_case(37, tumors='none'), (1.2, 1.2, 2.0))
    syn = tm.synthesize(c, 'A 2.5 cm hypodense lesion in the liver.', seed=0, model=model)
    e = syn.meta['truth']['lesions'][-1]
    assert e['textomorph']['patch_mm'] == 48.0 and abs(e['longest_diameter_mm'] - 25) <= 25 * 0.15
    assert not ((syn.ct != c.ct) & ~c.masks['liver']).any()


def test_save_load_round_trip(tmp_path, pairs):
    net = tm.train_textomorph(pairs, tm.textomorph_config(steps=2, batch=4), log_every=1)
    tm.save_textomorph(net, tmp_path / 'm')
    back = tm.load_textomorph(tmp_path / 'm')
    assert back.history == net.history and back.cfg == net.cfg
    for k, v in net.state_dict().items(): assert torch.equal(v, back.state_dict()[k]), k
    with pytest.raises(OutputExistsError): tm.save_textomorph(net, tmp_path / 'm', overwrite=False)
    with pytest.raises(MissingFileError, match='is not a TextoMorph model folder'): tm.load_textomorph(tmp_path / 'none')
    meta = json.loads((tmp_path / 'm' / 'config.json').read_text())
    old = dict(meta, format=1, config={k: v for k, v in meta['config'].items() if k not in tm.LEGACY[1]})
    (tmp_path / 'm' / 'config.json').write_text(json.dumps(old))    # a format-1 folder: no guidance fields
    legacy = tm.load_textomorph(tmp_path / 'm')
    assert (legacy.cfg.text_scale, legacy.cfg.cond_drop, legacy.cfg.guidance) == (1.0, 0.0, 1.0)
    meta['format'] = 99
    (tmp_path / 'm' / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(AbdomenNBError, match='format 99'): tm.load_textomorph(tmp_path / 'm')


def _cli(*args):
    return subprocess.run([str(Path(sys.executable).with_name('abdomen-nb')), 'synth', *args], capture_output=True, text=True)


def test_cli_train_and_insert(tmp_path):
    ds = tmp_path / 'ds'
    write_case(make_case(38, tumors='none'), ds / 'BDMAP_00000001')
    write_case(make_case(39), ds / 'BDMAP_00000002')
    (ds / 'BDMAP_00000003').mkdir(); (ds / 'BDMAP_00000003' / 'ct.nii.gz').write_bytes(b'not a nifti')
    r = _cli('train', str(ds), '--out', str(tmp_path / 'model'), '--steps', '3', '--pairs', '8')
    assert r.returncode == 0, r.stderr
    assert 'skipped BDMAP_00000003' in r.stderr and 'recorded lesions' in r.stdout
    assert sorted(p.name for p in (tmp_path / 'model').iterdir()) == ['config.json', 'weights.pt']
    before = (tmp_path / 'model' / 'weights.pt').read_bytes()
    r = _cli('train', str(ds), '--out', str(tmp_path / 'model'), '--steps', '1')
    assert r.returncode != 0 and 'overwrite' in r.stderr and (tmp_path / 'model' / 'weights.pt').read_bytes() == before
    r = _cli('insert', str(ds / 'BDMAP_00000001'), '--text', 'a 2 cm hyperdense mass in the liver', '--out', str(tmp_path / 'new'),
             '--method', 'textomorph', '--model', str(tmp_path / 'model'))
    assert r.returncode == 0, r.stderr
    new = read_case(tmp_path / 'new')
    assert new.meta['truth']['lesions'][-1]['source'] == 'abdomen_nb.textomorph' and new.masks['liver_lesion'].any()
    r = _cli('insert', str(ds / 'BDMAP_00000001'), '--text', 'a 2 cm lesion', '--out', str(tmp_path / 'bad'), '--method', 'textomorph')
    assert r.returncode != 0 and 'names no organ' in r.stderr and not (tmp_path / 'bad').exists()
    r = _cli('insert', str(ds / 'BDMAP_00000001'), '--text', 'a 2 cm lesion in the liver', '--out', str(tmp_path / 'bad2'),
             '--method', 'textomorph', '--model', str(tmp_path / 'nothing'))
    assert r.returncode != 0 and 'is not a TextoMorph model folder' in r.stderr and not (tmp_path / 'bad2').exists()


def test_pretrained_is_cached_not_shipped(tmp_path, monkeypatch, pairs):
    import abdomen_nb
    assert not list(Path(abdomen_nb.__file__).parent.rglob('*.pt'))          # no weights in the package
    monkeypatch.setenv('ABDOMEN_NB_CACHE', str(tmp_path))
    p = tm.pretrained_path()
    assert p.parent == tmp_path and p != tm.pretrained_path(tm.textomorph_config(steps=5))   # the name follows the config
    net = tm.train_textomorph(pairs, tm.textomorph_config(steps=1, batch=2), log_every=1)
    tm.save_new(net, p, training=False)          # a cached model is read back, never retrained
    got = tm.pretrained()
    assert got.history == net.history and torch.equal(got.ema.conv_in.conv.weight, net.ema.conv_in.conv.weight)
    assert [q.name for q in tmp_path.iterdir() if not q.name.endswith('.lock')] == [p.name]   # no temporary folder left
