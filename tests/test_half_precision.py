"""Half precision and TF32 in the fusion network: sums over whole images stay in range in
float16, and inference in float32 is float32 (no TF32) on every path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tdfusion.inference import fuse_luma
from tdfusion.nets import FusionNet, banded
from tdfusion.nets.blocks import pixel_gram, pixel_products

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pixel_sums_do_not_overflow_under_float16_autocast():
    """65536 pixels of value 1: float16's largest finite value is 65504."""
    x = torch.ones(1, 256, 256, 2)
    with torch.autocast("cpu", dtype=torch.float16):
        gram = pixel_gram(x)
        cross = pixel_products(x[..., :1], x[..., 1:])
    assert torch.isfinite(gram).all() and torch.isfinite(cross).all()
    assert gram[0, 0, 1].item() == 65536.0 and cross.item() == 65536.0


def test_float16_network_matches_float32_on_a_whole_image():
    """A freshly initialised network at 256x256 (its features sum past 65504 over the image):
    the module and the banded executor in float16 stay finite and near float32."""
    torch.manual_seed(0)
    net = FusionNet().eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(256, 256, generator=g), torch.rand(256, 256, generator=g)
    with torch.no_grad():
        ref = net(a[None, None], b[None, None])[0, 0]
        net.half()
        module = net(a.half()[None, None], b.half()[None, None])[0, 0].float()
        in_bands = banded.fuse_banded(net, a, b, band_rows=256).float()  # one band, as on a GPU
    for out in (module, in_bands):
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max().item() < 5e-3


@pytest.mark.parametrize("reference", [False, True])
def test_inference_runs_without_tf32(monkeypatch, reference):
    """cuDNN's default TF32 moved the published outputs by 3.4e-4 on an H200 (bar 1e-4); the
    flags are read while the network runs, and restored after."""
    seen = []

    def spy(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return original(*args, **kwargs)

    torch.manual_seed(0)
    net = FusionNet(dim=4, num_blocks=1, heads=2).eval()
    if reference:
        original = net.head.forward
        monkeypatch.setattr(net.head, "forward", spy)
    else:
        original = banded._head
        monkeypatch.setattr(banded, "_head", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    y = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    fuse_luma(net, y, y, reference=reference)
    assert seen == [(False, False)]
    assert torch.backends.cudnn.allow_tf32 is True


def test_band_normalisation_stays_finite_in_float16_far_from_the_mean():
    """The products form squares ``x - mean``; in float16 they overflow past 256, so float16
    bands use torch's LayerNorm (compared here with float32's)."""
    from tdfusion.nets.band_kernels import normalize_channels

    x = torch.randn(40, 30, 16, generator=torch.Generator().manual_seed(0)) * 300 + 5
    out = normalize_channels(x.half(), 1e-5)
    ref = torch.nn.functional.layer_norm(x.half().float(), (16,), eps=1e-5).reshape(-1, 16)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 1e-2
