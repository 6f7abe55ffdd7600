"""Every optimised path against a plain formulation of the same mathematics (issue 7).

* The modules (channels-last, attention folded into one matrix per image, split GELU
  gates) against the plain NCHW forward pass of ``tdfusion.nets.reference`` (the papers'
  equations with ``F.conv2d`` and ``channel_layer_norm`` / ``transposed_attention``,
  themselves checked against textbook loops in test_nets.py): outputs, first- and
  second-order gradients, float64.
* The exact banded executor (``tdfusion.nets.banded``) against the unchunked network, with
  band heights that force many bands, odd sizes and every border case; and against the
  published reference output of a real checkpoint.
* The first-order meta-gradient (``tdfusion.meta.jvp``) against the engine's
  straightforward second-order formulation, float64, for the reconstruction and
  segmentation tasks and both loss forms.

No timing is asserted anywhere: speed is measured by ``tdfusion bench`` (BENCHMARKS.md).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tdfusion.errors import TDFusionError
from tdfusion.inference import fuse_luma
from tdfusion.nets import FusionNet, LossGenerator
from tdfusion.nets.band_plan import parse_memory, plan_bands
from tdfusion.nets.banded import fuse_banded
from tdfusion.nets.blocks import attention_mixing, transposed_attention
from tdfusion.nets.reference import plain_fusion, plain_lossgen

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(net: torch.nn.Module, seed: int, dtype=F64) -> torch.nn.Module:
    """Move away from the initialisation (LayerNorm 1/0, temperatures 1) so every term matters."""
    g = torch.Generator().manual_seed(seed)
    net = net.to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=dtype))
    return net


def _pair(b, h, w, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype)


# ------------------------------------------------------------------------ modules vs reference

def test_attention_mixing_equals_attention_then_projection():
    g = torch.Generator().manual_seed(0)
    bsz, c, h, w, heads = 2, 8, 5, 7, 4
    q, k, v = (torch.randn(bsz, c, h, w, generator=g, dtype=F64) for _ in range(3))
    temperature = torch.rand(heads, 1, 1, generator=g, dtype=F64) + 0.5
    proj = torch.randn(c, c, 1, 1, generator=g, dtype=F64)
    expected = F.conv2d(transposed_attention(q, k, v, temperature, heads), proj)
    mix = attention_mixing(q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1), temperature, proj, heads)
    out = torch.einsum("boc,bchw->bohw", mix, v)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _grads(fn, params, inputs):
    out = fn(params, *inputs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    loss = (out * weights).sum()
    return out, torch.autograd.grad(loss, [*params.values(), *inputs])


@pytest.mark.parametrize("kind", ["fusion", "lossgen", "lossgen-refusion"])
def test_module_forward_and_gradients_match_plain_formulation(kind):
    blocks, heads = 1, 2
    if kind == "fusion":
        net = _randomised(FusionNet(dim=8, num_blocks=blocks, heads=heads), seed=1)

        def ref(p, a, b):
            return plain_fusion(p, a, b, blocks, heads)
    else:
        pairs, with_grad = (2, True) if kind == "lossgen-refusion" else (1, False)
        net = _randomised(LossGenerator(dim=8, num_blocks=blocks, heads=heads, pairs=pairs,
                                        with_gradients=with_grad), seed=2)

        def ref(p, a, b):
            return plain_lossgen(p, a, b, blocks, heads, pairs, with_grad)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    a, b = (x.requires_grad_(True) for x in _pair(2, 9, 11, seed=3))

    def module(p, a, b):
        return functional_call(net, p, (a, b))

    out, grads = _grads(module, params, (a, b))
    ref_out, ref_grads = _grads(ref, params, (a, b))
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, g, r in zip([*params, "a", "b"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


def test_module_second_order_gradients_match_plain_formulation():
    """The straightforward meta step differentiates through dL/dtheta: Hessian-vector products agree."""
    blocks, heads = 1, 2
    net = _randomised(FusionNet(dim=4, num_blocks=blocks, heads=heads), seed=4)
    a, b = _pair(1, 6, 5, seed=5)
    names = ["afm.temperature_a", "encoder_a.0.ffn.proj.weight", "decoder.0.attn.qkv.depth.weight"]
    base = {k: v.detach() for k, v in net.named_parameters()}
    vec = [torch.randn_like(base[n]) for n in names]

    def hvp(fn):
        p = {**base, **{n: base[n].clone().requires_grad_(True) for n in names}}
        loss = fn(p, a, b).square().mean()
        g = torch.autograd.grad(loss, [p[n] for n in names], create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, vec))
        return torch.autograd.grad(dot, [p[n] for n in names])

    got = hvp(lambda p, a, b: functional_call(net, p, (a, b)))
    expected = hvp(lambda p, a, b: plain_fusion(p, a, b, blocks, heads))
    for n, x, y in zip(names, got, expected):
        assert y.abs().max() > 0, n
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=n)


# ------------------------------------------------------------------------ exact banded inference

@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 100])
def test_banded_equals_unchunked_float64(rows):
    """Band heights from 1 row (every row a band) to one band; 23 rows is not a multiple of any."""
    net = _randomised(FusionNet(dim=8, num_blocks=2, heads=4), seed=6).eval()
    a, b = _pair(1, 23, 17, seed=7)
    with torch.no_grad():
        expected = net(a, b)[0, 0]
    out = fuse_banded(net, a, b, band_rows=rows)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)


def test_banded_equals_unchunked_float32_published_size():
    """Default architecture, float32, many bands: within 1e-4 (the project's parity tolerance)."""
    torch.manual_seed(8)
    net = _randomised(FusionNet(), seed=8, dtype=torch.float32).eval()
    a, b = _pair(1, 70, 96, seed=9, dtype=torch.float32)
    with torch.no_grad():
        expected = net(a, b)[0, 0]
    for rows in (4, 9):  # 18 and 8 bands
        out = fuse_banded(net, a, b, band_rows=rows)
        assert (out - expected).abs().max().item() < 1e-4


def test_banded_memory_bound_picks_rows_and_matches(tmp_path):
    net = FusionNet(dim=8, num_blocks=1, heads=4).eval()
    a, b = _pair(1, 40, 30, seed=10, dtype=torch.float32)
    plan = plan_bands(net, 40, 30)
    budget = plan.resident + plan.per_row * 7  # room for exactly 3 rows plus the 4 halo rows
    small = plan_bands(net, 40, 30, max_memory=budget)
    assert small.rows == 3 and small.expected_bytes <= budget
    with torch.no_grad():
        expected = net(a, b)[0, 0]
    torch.testing.assert_close(fuse_banded(net, a, b, max_memory=budget), expected, rtol=0, atol=1e-5)


def test_memory_bound_too_small_is_a_clear_error():
    net = FusionNet()
    with pytest.raises(TDFusionError, match=r"--max-memory .*4000x3000 image needs at least"):
        plan_bands(net, 3000, 4000, max_memory="1G")
    with pytest.raises(TDFusionError, match="--chunk-rows 0"):
        plan_bands(net, 30, 40, band_rows=0)
    with pytest.raises(TDFusionError, match="expected a size"):
        parse_memory("lots")


def test_gpu_default_plan_fits_the_free_memory(monkeypatch):
    """No GPU here: torch's free-memory query is replaced, the planning logic is what runs."""
    net = FusionNet()
    free = {"bytes": 64 * 2 ** 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 2 ** 30))
    assert plan_bands(net, 480, 640, device="cuda").rows == 480  # fits: one band
    free["bytes"] = 3 * 2 ** 30
    plan = plan_bands(net, 3000, 4000, device="cuda")
    assert 1 <= plan.rows < 3000 and plan.expected_bytes <= 0.8 * free["bytes"]
    free["bytes"] = 2 ** 30
    with pytest.raises(TDFusionError, match=r"4000x3000 image needs at least .* of GPU memory, 1.00 GiB is free"):
        plan_bands(net, 3000, 4000, device="cuda")
    # An explicit bound or band height is taken as given.
    assert plan_bands(net, 3000, 4000, band_rows=10, device="cuda").rows == 10


def test_parse_memory_units():
    assert parse_memory("4G") == 4 * 2 ** 30
    assert parse_memory("1.5GB") == 3 * 2 ** 29
    assert parse_memory("800MiB") == 800 * 2 ** 20
    assert parse_memory("512k") == 512 * 1024
    assert parse_memory(1000) == 1000


def test_fuse_luma_banded_and_reference_paths_agree():
    net = _randomised(FusionNet(dim=8, num_blocks=1, heads=2), seed=11, dtype=torch.float32).eval()
    g = np.random.default_rng(12)
    ya, yb = g.random((31, 29), dtype=np.float32), g.random((31, 29), dtype=np.float32)
    fast = fuse_luma(net, ya, yb, chunk_rows=4)
    plain = fuse_luma(net, ya, yb, reference=True)
    assert fast.dtype == np.float32 and fast.shape == (31, 29)
    assert np.abs(fast - plain).max() < 1e-5


def test_banded_matches_published_reference_output(shared_data):
    """Real checkpoint, real pair, many bands: the reference implementation's raw output within 1e-4."""
    from tdfusion.checkpoint import load_fusion_net
    from tdfusion.colour import split_luma
    from tdfusion.io import read_image

    root = shared_data / "refusion"
    net, _ = load_fusion_net(root / "models" / "ReFusion_MIF.pth")
    ya, _ = split_luma(read_image(root / "test_cases" / "MIF" / "CT_PET_SPECT" / "MRI_PET_14.png").pixels)
    yb, _ = split_luma(read_image(root / "test_cases" / "MIF" / "MRI" / "MRI_PET_14.png").pixels)
    ref = np.load(root / "reference_outputs" / "MIF" / "MRI_PET_14.raw.npy")
    out = fuse_luma(net, ya, yb, chunk_rows=7)  # 37 bands
    assert np.abs(out.astype(np.float64) - ref).max() < 1e-4


def test_fuse_cli_rejects_impossible_memory_bound_before_writing(tmp_path):
    import cv2

    from tdfusion.checkpoint import module_record, save_checkpoint
    from tdfusion.cli import main

    ckpt = tmp_path / "net.pt"
    save_checkpoint({"fusion": module_record("fusion", FusionNet(dim=8, num_blocks=1, heads=2))}, ckpt)
    img = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / "x.png"), img)
    out = tmp_path / "out"
    args = ["fuse", "--checkpoint", str(ckpt), "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"),
            "--out", str(out), "--device", "cpu"]
    assert main(args + ["--max-memory", "10k"]) == 2
    assert not out.exists() or not any(out.iterdir())
    assert main(args + ["--chunk-rows", "5"]) == 0
    assert (out / "x.png").is_file()


# ------------------------------------------------------------------------ meta-gradient

def _meta_setup(task_name: str, form: str, intensity: str, fixed: bool = False):
    from tdfusion.tasks import create_task
    from tdfusion.meta import objectives

    torch.manual_seed(13)
    fusion = _randomised(FusionNet(dim=4, num_blocks=1, heads=2), seed=14)
    pairs, with_grad = (2, True) if form == "refusion" else (1, False)
    lossgen = _randomised(LossGenerator(dim=4, num_blocks=1, heads=2, pairs=pairs, with_gradients=with_grad), seed=15)
    if task_name == "seg":
        tiny = dict(hidden_sizes=[4, 8, 8, 8], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                    sr_ratios=[4, 2, 1, 1], decoder_hidden_size=8, drop_path_rate=0.0, classifier_dropout_prob=0.0)
        task = create_task("seg", {"num_classes": 3, "segformer": tiny})
    else:
        task = create_task("recon", {"dim": 4, "num_blocks": 1, "heads": 2})
    task_net = task.build_network().to(F64)
    g = torch.Generator().manual_seed(16)

    def batch(size):
        a, b = (torch.rand(2, 1, 16, 16, generator=g, dtype=F64) for _ in range(2))
        ca, cb = (torch.rand(2, 1, size, size, generator=g, dtype=F64) for _ in range(2))
        return {"a": a, "b": b, "crop_a": ca, "crop_b": cb, "stems": ["s0", "s1"],
                "mask": torch.randint(0, 3, (2, 16, 16), generator=g)}

    settings = objectives.LossSettings(form=form, intensity=intensity, fixed=fixed)
    return (fusion, objectives.params_of(fusion), lossgen, objectives.params_of(lossgen), task, task_net,
            objectives.params_of(task_net), batch(12), batch(12), 0.05, 0.01, settings)


@pytest.mark.parametrize("task_name, form, intensity", [
    ("recon", "tdfusion", "paper"),
    ("recon", "refusion", "reference"),
    ("seg", "tdfusion", "paper"),
    ("seg", "refusion", "paper"),
])
def test_first_order_meta_gradient_equals_second_order(task_name, form, intensity):
    from tdfusion.meta import objectives
    from tdfusion.meta.jvp import meta_gradient_jvp

    args = _meta_setup(task_name, form, intensity)
    expected, logs = objectives.meta_gradient_second_order(*args)
    timings = {}
    got, got_logs = meta_gradient_jvp(*args, timings=timings)
    assert list(got) == list(expected)
    scale = max(v.abs().max().item() for v in expected.values())
    assert scale > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12 * scale, msg=name)
    assert got_logs == pytest.approx(logs, rel=1e-12)
    assert set(timings) == {"inner", "task_inner", "outer", "jvp", "lossgen"}


def test_meta_gradient_with_fixed_weights_is_zero_in_both_formulations():
    from tdfusion.meta import objectives
    from tdfusion.meta.jvp import meta_gradient_jvp

    args = _meta_setup("recon", "tdfusion", "paper", fixed=True)
    expected, _ = objectives.meta_gradient_second_order(*args)
    got, _ = meta_gradient_jvp(*args)
    for name in expected:
        assert torch.count_nonzero(expected[name]) == 0 and torch.count_nonzero(got[name]) == 0
