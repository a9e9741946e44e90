"""Checks for abdomen_nb.lrp and abdomen_nb.isnet that a notebook is the wrong place for:
hand-computed LRP values, a property test of conservation, second-order gradients against finite
differences, agreement with captum, and a small ISNet training run on the biased digits."""
import math
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from abdomen_nb.lrp import LRPFlex, lrp_heatmap, lrp_sequential
from abdomen_nb.isnet import (ISNetConfig, background_loss, background_share, biased_digits, calibrate,
                              fit, foreground_loss, gwrp, relevance_totals, tiny_cnn)


def hand_network():
    "x (2) -> Linear(2, 2) -> ReLU -> Linear(2, 1), weights chosen so both hidden units are active at x = (1, 2)"
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight[:] = torch.tensor([[1., .5], [2., -.5]]); net[0].bias[:] = torch.tensor([.5, -.5])
        net[2].weight[:] = torch.tensor([[1., -2.]]); net[2].bias[:] = .1
    return net


def test_lrp_epsilon_closed_form():
    # z = (1 + 1 + .5, 2 - 1 - .5) = (2.5, .5); R_j = a_j w_j = (2.5, -1);
    # R_i = x_i sum_j w_ji R_j / (z_j + .01)
    x = torch.tensor([[1., 2.]], dtype=torch.double)
    R1 = 1 * (1 * 2.5 / 2.51 + 2 * -1 / .51)
    R2 = 2 * (.5 * 2.5 / 2.51 + -.5 * -1 / .51)
    H = lrp_heatmap(hand_network(), x, target=[0], first_rule='eps')
    np.testing.assert_allclose(H[0].numpy(), [R1, R2], rtol=1e-12)
    Hr = lrp_sequential(hand_network(), x, [0], first_rule='eps')
    np.testing.assert_allclose(Hr[0].detach().numpy(), [R1, R2], rtol=1e-12)


def test_zb_closed_form():
    # Z^B with l = 0, h = 1: numerators x_i w_ji - h min(w_ji, 0)
    x = torch.tensor([[1., 2.]], dtype=torch.double)
    num = np.array([[1 * 1., 2 * .5], [1 * 2., 2 * -.5 + .5]])
    R = (num / (num.sum(1, keepdims=True) + .01) * np.array([[2.5], [-1.]])).sum(0)
    np.testing.assert_allclose(lrp_heatmap(hand_network(), x, target=[0])[0].numpy(), R, rtol=1e-12)


def test_zb_isnet_keeps_the_positive_bias_in_the_denominator():
    # ISNet's Z^B: z_j = sum_i (x_i w_ji - l w+_ji - h w-_ji) + b_j - l b+_j - h b-_j; l = 0, h = 1 leaves b+_j.
    # The hand network's first-layer biases are (.5, -.5): only unit 0's denominator grows, by 0.5.
    x = torch.tensor([[1., 2.]], dtype=torch.double)
    num = np.array([[1 * 1., 2 * .5], [1 * 2., 2 * -.5 + .5]])
    Rj = np.array([[2.5], [-1.]])
    R = (num / (num.sum(1, keepdims=True) + np.array([[.5], [0.]]) + .01) * Rj).sum(0)
    np.testing.assert_allclose(lrp_heatmap(hand_network(), x, target=[0], zb_bias=True)[0].numpy(), R, rtol=1e-12)
    np.testing.assert_allclose(lrp_sequential(hand_network(), x, [0], zb_bias=True)[0].detach().numpy(), R, rtol=1e-12)
    # the textbook rule is the default and differs exactly there
    textbook = (num / (num.sum(1, keepdims=True) + .01) * Rj).sum(0)
    np.testing.assert_allclose(lrp_heatmap(hand_network(), x, target=[0])[0].numpy(), textbook, rtol=1e-12)
    assert not np.allclose(R, textbook)


def test_zb_isnet_single_neuron_by_hand():
    # one Linear neuron, w = (2, -1), b = 5, x = (.5, .25), R = 3, l = 0, h = 1:
    # numerators x w - h w- = (1, .75); textbook denominator 1.75, ISNet's 1.75 + b+ = 6.75;
    # a negative bias has no positive part and gives the textbook value
    from abdomen_nb.lrp import zb_relevance
    lin = nn.Linear(2, 1).double()
    with torch.no_grad(): lin.weight[:] = torch.tensor([[2., -1.]]); lin.bias[:] = 5.
    x, R = torch.tensor([[.5, .25]], dtype=torch.double), torch.tensor([[3.]], dtype=torch.double)
    got = zb_relevance(lin, x, R, lin.weight, eps=0., bias=lin.bias)
    np.testing.assert_allclose(got.detach().numpy(), [[3 / 6.75, 3 * .75 / 6.75]], rtol=1e-12)
    np.testing.assert_allclose(zb_relevance(lin, x, R, lin.weight, eps=0.).detach().numpy(), [[3 / 1.75, 3 * .75 / 1.75]], rtol=1e-12)
    neg = zb_relevance(lin, x, R, lin.weight, eps=0., bias=torch.tensor([-.5], dtype=torch.double))
    np.testing.assert_allclose(neg.detach().numpy(), [[3 / 1.75, 3 * .75 / 1.75]], rtol=1e-12)


@pytest.mark.parametrize('train', [False, True])
def test_flex_equals_reference_with_isnet_zb_and_batchnorm(train):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 36, 4)).double().train(train)
    bn = net[1]; bn.running_mean.uniform_(-.3, .3); bn.running_var.uniform_(.5, 2); bn.bias.data.uniform_(-.2, .5)
    x = torch.rand(3, 1, 6, 6, dtype=torch.double)
    with LRPFlex(net, zb_bias=True) as lrp:
        y = lrp(x); t = y.argmax(1)
        H = lrp.explain(y.gather(1, t[:, None]).squeeze(1), create_graph=False)
    Hr = lrp_sequential(net, x, t, zb_bias=True)
    assert (H - Hr).abs().max() < 1e-12
    assert (H - lrp_heatmap(net, x, t)).abs().max() > 1e-6     # the positive fused biases make a difference


def test_zplus_closed_form():
    x = torch.tensor([[1., 2.]], dtype=torch.double)
    pos = np.array([[1 * 1., 2 * .5], [1 * 2., 0.]])
    R = (pos / (pos.sum(1, keepdims=True) + .01) * np.array([[2.5], [-1.]])).sum(0)
    Hr = lrp_sequential(hand_network(), x, [0], first_rule='zplus')
    np.testing.assert_allclose(Hr[0].detach().numpy(), R, rtol=1e-12)



def test_alphabeta_closed_form():
    # alpha = 2, beta = 1 at the first layer: R_i = sum_j (2 p_ji / (P_j + .01) - n_ji / (N_j - .01)) R_j,
    # p / n the positive / negative contributions x_i w_ji (unit 0 has none negative: its N_j = 0 term is 0)
    x = torch.tensor([[1., 2.]], dtype=torch.double)
    pos = np.array([[1 * 1., 2 * .5], [1 * 2., 0.]]); neg = np.array([[0., 0.], [0., 2 * -.5]])
    Rj = np.array([[2.5], [-1.]])
    R = (2 * pos / (pos.sum(1, keepdims=True) + .01) * Rj).sum(0)
    R[1] -= neg[1, 1] / (neg[1].sum() - .01) * Rj[1, 0]
    Hr = lrp_sequential(hand_network(), x, [0], first_rule='alphabeta', alpha=2., beta=1.)
    np.testing.assert_allclose(Hr[0].detach().numpy(), R, rtol=1e-12)
    # alpha = 1, beta = 0 is z+
    np.testing.assert_allclose(lrp_sequential(hand_network(), x, [0], first_rule='alphabeta')[0].detach().numpy(),
                               lrp_sequential(hand_network(), x, [0], first_rule='zplus')[0].detach().numpy(), rtol=1e-12)

def cnn(dim=2, bn=False, seed=0):
    torch.manual_seed(seed)
    Conv, BN, Pool = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dim == 2 else
                      (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d))
    layers = [Conv(1, 4, 3, padding=1)] + ([BN(4)] if bn else []) + [nn.ReLU(), Pool(2),
              Conv(4, 8, 3, padding=1)] + ([BN(8)] if bn else []) + [nn.ReLU(), Pool(2), nn.Flatten(),
              nn.Linear(8 * 2 ** dim, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize('dim', [2, 3])
def test_conservation(dim):
    net = cnn(dim).eval()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.zeros_(m.bias); m.weight.data *= 4           # activations of order 1
    x = torch.rand(6, 1, *[8] * dim, dtype=torch.double)
    y = net(x); t = y.argmax(1); logit = y.gather(1, t[:, None]).squeeze(1).detach()
    for rule in ('zb', 'eps'):
        total = lrp_heatmap(net, x, t, first_rule=rule).flatten(1).sum(1)
        assert ((total - logit).abs() / logit.abs().mean()).max() < 0.05       # eps = 0.01 absorbs a little
        exact = lrp_heatmap(net, x, t, first_rule=rule, eps=1e-9).flatten(1).sum(1)
        np.testing.assert_allclose(exact.numpy(), logit.numpy(), rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(1, 6), depth=st.integers(1, 3))
def test_conservation_property(seed, width, depth):
    "Any bias-free ReLU MLP, inputs in [0, 1]: with eps -> 0 the input relevance sums to the logit"
    torch.manual_seed(seed)
    layers, n_in = [], 5
    for _ in range(depth):
        layers += [nn.Linear(n_in, width, bias=False), nn.ReLU()]; n_in = width
    net = nn.Sequential(*layers, nn.Linear(n_in, 2, bias=False)).double()
    x = torch.rand(4, 5, dtype=torch.double)
    y = net(x)[:, 1].detach()
    for rule in ('zb', 'eps'):
        H = lrp_heatmap(net, x, torch.ones(4, dtype=torch.long), eps=1e-12, first_rule=rule)
        np.testing.assert_allclose(H.sum(1).numpy(), y.numpy(), atol=1e-9)


@pytest.mark.parametrize('dim,train', [(2, False), (2, True), (3, True)])
def test_flex_equals_reference_with_batchnorm(dim, train):
    net = cnn(dim, bn=True).train(train)
    x = torch.rand(4, 1, *[8] * dim, dtype=torch.double)
    with LRPFlex(net) as lrp:
        y = lrp(x); t = y.argmax(1)
        H = lrp.explain(y.gather(1, t[:, None]).squeeze(1))
    Hr = lrp_sequential(net, x, t)
    torch.testing.assert_close(H, Hr, rtol=1e-9, atol=1e-12)
    g1 = torch.autograd.grad(H.abs().sum(), net[0].weight)[0]
    g2 = torch.autograd.grad(Hr.abs().sum(), net[0].weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-12)


def test_gradients_reach_every_layer_and_are_correct():
    net = cnn().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.double); t = torch.tensor([0, 2])
    H = lrp_heatmap(net, x, t, create_graph=True)
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad((H ** 2).sum(), weights)
    assert all(g.abs().sum() > 0 for g in grads)
    from torch.func import functional_call
    names = ['0.weight', '9.weight']   # weights only: biases are detached in denominators on purpose, so their
    # heatmap gradient is deliberately not the full derivative and gradcheck would (rightly) flag it
    def heat(*ws):
        params = {**dict(net.named_parameters()), **dict(zip(names, ws))}
        with LRPFlex(net) as lrp:
            lrp.x, lrp.first, lrp.first_bn, lrp.first_z, lrp.z1, lrp.a1 = x, None, None, None, None, None
            y = functional_call(net, params, (x,))
            return lrp.explain(y.gather(1, t[:, None]).squeeze(1))
    ws = [dict(net.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(heat, ws, eps=1e-6, atol=1e-6)


def test_classification_gradients_unchanged_by_hooks():
    net = cnn(bn=True).train()
    x = torch.rand(4, 1, 8, 8, dtype=torch.double); y = torch.tensor([0, 1, 2, 0])
    plain = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), list(net.parameters()))
    with LRPFlex(net) as lrp:
        out = lrp(x); lrp.explain(out[:, 0])
    hooked = torch.autograd.grad(nn.functional.cross_entropy(out, y), list(net.parameters()))
    for a, b in zip(plain, hooked): torch.testing.assert_close(a, b, rtol=0, atol=0)


class CaptumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    def forward(self, x): return self.head(self.features(x).flatten(1))   # no nn.Flatten: captum lacks a rule


def test_agrees_with_captum():
    captum = pytest.importorskip('captum')
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule
    torch.manual_seed(0)
    net = CaptumNet().double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.double); t = torch.tensor([0, 1, 2, 0, 1])
    for m in (net.features[0], net.features[3], net.head[0]): m.rule = EpsilonRule(0.01)
    net.head[2].rule = EpsilonRule(1e-9)               # gradient x input at the output layer
    Hc = LRP(net).attribute(x, target=t).detach()
    for m in net.modules():
        if hasattr(m, 'rule'): del m.rule
    H = lrp_heatmap(net, x, t, first_rule='eps')
    torch.testing.assert_close(H, Hc, rtol=1e-6, atol=1e-8)
    # captum has no rule for Conv3d: LRPFlex is the one to use in 3D
    net3d = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU()).double()
    with pytest.raises(TypeError):
        LRP(net3d).attribute(torch.rand(1, 1, 5, 5, 5, dtype=torch.double), target=0)


def test_heatmap_loss_pieces_by_hand():
    H = torch.full((1, 1, 4, 4), .5); H[..., 1:3, 1:3] = 1.
    fg = torch.zeros(1, 1, 4, 4, dtype=torch.bool); fg[..., 1:3, 1:3] = True
    assert math.isclose(background_loss(H, fg).item(), math.log(1.5), rel_tol=1e-6)
    assert foreground_loss(H, fg, 8., 16.).item() == pytest.approx(.25)
    assert gwrp(torch.tensor([[1., 3., 2.]]), torch.ones(1, 3, dtype=torch.bool)).item() == \
        pytest.approx((3 + .9 * 2 + .81) / 2.71)
    assert calibrate(torch.tensor([9., 10., 11.])) == pytest.approx((7., 13.))


def test_isnet_lowers_background_relevance_on_biased_digits():
    "Fixed seed, tiny config: a Faster ISNet's heatmaps put less relevance on the background (the marks)"
    torch.set_num_threads(1)
    data = biased_digits(n_train=400, seed=0)
    train, (xt, yt, mt) = data['train'], tuple(t[:200] for t in data['biased'])
    cfg = ISNetConfig(epochs=4, seed=0)
    standard = tiny_cnn(seed=1); fit(standard, train, cfg)
    warm = tiny_cnn(seed=1); fit(warm, train, cfg, epochs=2)
    C = calibrate(relevance_totals(warm, train[0], 'selective'))
    isnet = tiny_cnn(seed=1); fit(isnet, train, ISNetConfig(variant='selective', epochs=4, seed=0), C)
    share_std, share_isnet = background_share(standard, xt, mt), background_share(isnet, xt, mt)
    assert share_isnet < 0.5 * share_std, (share_isnet, share_std)
