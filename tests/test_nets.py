"""The fusion network F and the loss generator G (tdfusion.nets).

References used here are independent of the code under test: the parameter count
published for ReFusion (DESIGN §1), textbook formulas for LayerNorm and Restormer's
channel attention written out with explicit loops, finite-difference gradients
(``torch.autograd.gradcheck``) and the closed form of a two-way softmax.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tdfusion.nets import FusionNet, LossGenerator, create_model, list_models
from tdfusion.nets.blocks import channel_layer_norm, transposed_attention

# ReFusion's fusion network at its published size (dim 16, 2 blocks, 8 heads, FFN x2).
REFUSION_PARAMETERS = 59_856


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_fusion(seed: int = 0, dtype=torch.float32) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(dim=8, num_blocks=1, heads=2).to(dtype).eval()


def _sources(b=1, h=12, w=10, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype)


# ---------------------------------------------------------------- size and state

def test_default_fusion_net_has_refusion_parameter_count():
    net = FusionNet()
    assert sum(p.numel() for p in net.parameters()) == REFUSION_PARAMETERS


@pytest.mark.parametrize("factory", [
    lambda: FusionNet(),
    lambda: LossGenerator(),
    lambda: LossGenerator(pairs=2, with_gradients=True),
], ids=["fusion", "lossgen", "lossgen-w-v-grad"])
def test_state_is_parameters_only(factory):
    """No buffers and no hidden weight copies: functional_call can swap every tensor."""
    net = factory()
    assert list(net.buffers()) == []
    assert list(net.state_dict()) == [name for name, _ in net.named_parameters()]
    # No parameter is shared under two names (state_dict would then hold a twin).
    ids = [id(p) for _, p in net.named_parameters(remove_duplicate=False)]
    assert len(ids) == len(set(ids))


def test_registry_builds_by_name():
    assert {"fusion", "lossgen"} <= set(list_models())
    net = create_model("fusion", dim=8, num_blocks=1, heads=2)
    assert isinstance(net, FusionNet) and net.config["dim"] == 8
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no-such-net")


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        FusionNet(dim=12, heads=8)


# ---------------------------------------------------------------- forward behaviour

def test_fusion_output_shape_range_and_batch_independence():
    net = _tiny_fusion()
    a, b = _sources(b=2, h=13, w=17)  # odd sizes: no down-sampling anywhere
    with torch.no_grad():
        out = net(a, b)
        single = net(a[1:], b[1:])
    assert out.shape == (2, 1, 13, 17)
    assert out.min() > 0 and out.max() < 1
    # Attention pools over pixels of one image, never across the batch.
    torch.testing.assert_close(out[1:], single, rtol=1e-5, atol=1e-6)


def test_functional_call_reproduces_forward_and_leaves_module_alone():
    net = _tiny_fusion()
    a, b = _sources()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    with torch.no_grad():
        expected = net(a, b)
        same = functional_call(net, params, (a, b))
        perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
        changed = functional_call(net, perturbed, (a, b))
        after_call = net(a, b)
    assert torch.equal(same, expected)
    assert (changed - expected).abs().max() > 1e-3
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"functional_call modified {k}"
    assert torch.equal(after_call, expected)


def test_functional_call_only_one_tensor_perturbed_changes_output():
    """Every parameter is used: perturbing any single one (here the last head conv) matters."""
    net = _tiny_fusion()
    a, b = _sources()
    params = dict(net.named_parameters())
    name = "head.2.weight"
    with torch.no_grad():
        base = net(a, b)
        out = functional_call(net, {**params, name: params[name] * 1.5}, (a, b))
    assert (out - base).abs().max() > 1e-4


def test_gradients_match_finite_differences():
    """First- and second-order gradients through functional_call (what meta-learning uses)."""
    net = _tiny_fusion(dtype=torch.float64)
    a, b = _sources(h=6, w=5, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}

    # Few scalar inputs keep the finite differences cheap: one attention temperature
    # pair and one scale on a convolution weight deep in the encoder.
    def fused_mean(temperature, scale):
        swapped = {**params, "afm.temperature_a": temperature,
                   "encoder_b.0.ffn.proj.weight": params["encoder_b.0.ffn.proj.weight"] * scale}
        return functional_call(net, swapped, (a, b)).square().mean()

    inputs = (params["afm.temperature_a"].clone().requires_grad_(True),
              torch.tensor(1.3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(fused_mean, inputs, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fused_mean, inputs, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- building blocks vs textbook

def test_channel_layer_norm_matches_mean_and_biased_variance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64) * 3 + 1
    weight = torch.randn(6, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    eps = 1e-5
    expected = torch.empty_like(x)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                v = x[n, :, i, j]
                mean = v.sum() / v.numel()
                var = ((v - mean) ** 2).sum() / v.numel()  # biased
                expected[n, :, i, j] = (v - mean) / torch.sqrt(var + eps) * weight + bias
    torch.testing.assert_close(channel_layer_norm(x, weight, bias, eps), expected, rtol=1e-10, atol=1e-10)


def test_transposed_attention_matches_per_head_loop():
    g = torch.Generator().manual_seed(4)
    bsz, c, h, w, heads = 2, 8, 3, 5, 4
    q, k, v = (torch.randn(bsz, c, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    temperature = torch.rand(heads, 1, 1, generator=g, dtype=torch.float64) + 0.5
    d = c // heads
    expected = torch.empty_like(q)
    for n in range(bsz):
        for head in range(heads):
            rows = slice(head * d, (head + 1) * d)
            qh = q[n, rows].reshape(d, h * w)
            kh = k[n, rows].reshape(d, h * w)
            vh = v[n, rows].reshape(d, h * w)
            qh = qh / qh.norm(dim=1, keepdim=True)
            kh = kh / kh.norm(dim=1, keepdim=True)
            logits = torch.empty(d, d, dtype=q.dtype)
            for i in range(d):
                for j in range(d):
                    logits[i, j] = (qh[i] * kh[j]).sum() * temperature[head, 0, 0]
            weights = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
            expected[n, rows] = (weights @ vh).reshape(d, h, w)
    out = transposed_attention(q, k, v, temperature, heads)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- loss generator G

@pytest.mark.parametrize("pairs", [1, 2])
@pytest.mark.parametrize("with_gradients", [False, True])
def test_lossgen_outputs_softmax_pairs(pairs, with_gradients):
    torch.manual_seed(5)
    net = LossGenerator(dim=8, num_blocks=1, heads=2, pairs=pairs, with_gradients=with_gradients).eval()
    # Make the logits far from uniform so a wrong softmax axis cannot pass by luck.
    with torch.no_grad():
        net.head[2].weight.mul_(20)
    a, b = _sources(b=2, h=9, w=11)
    captured = {}
    hook = net.head.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    with torch.no_grad():
        out = net(a, b)
    hook.remove()
    assert out.shape == (2, 2 * pairs, 9, 11)
    assert out.min() >= 0 and out.max() <= 1
    logits = captured["logits"]
    for p in range(pairs):
        wa, wb = out[:, 2 * p], out[:, 2 * p + 1]
        torch.testing.assert_close(wa + wb, torch.ones_like(wa), rtol=0, atol=1e-6)
        # Two-way softmax in closed form: w_a = sigmoid(l_a - l_b).
        torch.testing.assert_close(wa, torch.sigmoid(logits[:, 2 * p] - logits[:, 2 * p + 1]),
                                   rtol=1e-5, atol=1e-6)
    assert out[:, 0].std() > 1e-3, "weights should vary over pixels"


def test_lossgen_gradient_input_changes_the_first_layer():
    assert LossGenerator(with_gradients=False).embed_a.weight.shape[1] == 1
    assert LossGenerator(with_gradients=True).embed_a.weight.shape[1] == 2
    with pytest.raises(ValueError, match="pairs"):
        LossGenerator(pairs=3)
