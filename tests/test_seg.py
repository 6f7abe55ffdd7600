"""The segmentation task head: SegFormer network, loss, gradients, weights, mIoU.

References used: ``torch.nn.functional.cross_entropy`` and a NumPy log-softmax for the
loss, OpenCV's bilinear resize for the logit upsampling, finite differences
(``torch.autograd.gradcheck`` and central differences) for the gradients, per-class
boolean-mask counting for the metrics, and the SegFormer paper's parameter counts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tdfusion.tasks import create_task
from tdfusion.tasks.seg import (SegmentationEvaluator, confusion_matrix, segmentation_loss, segmentation_metrics,
                                upsample_logits)
from tdfusion.tasks.segformer import build_segformer
from tdfusion.errors import TDFusionError

# A SegFormer small enough for float64 finite differences; 16x16 inputs work with these
# reduction ratios (stage resolutions 4, 2, 1, 1).
TINY = dict(hidden_sizes=[4, 8, 8, 8], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
            sr_ratios=[4, 2, 1, 1], decoder_hidden_size=8, drop_path_rate=0.0, classifier_dropout_prob=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_task(k=5, **extra):
    return create_task("seg", {"num_classes": k, "segformer": dict(TINY), **extra})


def _params(net):
    return dict(net.named_parameters()) | dict(net.named_buffers())


# -- loss ---------------------------------------------------------------------------------
def _numpy_ce(up: np.ndarray, target: np.ndarray, ignore: int, weights: np.ndarray | None) -> float:
    """Weighted-mean pixel cross-entropy written out with NumPy (``up`` already at label size)."""
    b, k, h, w = up.shape
    z = up.transpose(0, 2, 3, 1).reshape(-1, k)
    t = target.reshape(-1)
    keep = t != ignore
    z, t = z[keep], t[keep]
    zmax = z.max(1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(1, keepdims=True))
    nll = -logp[np.arange(len(t)), t]
    wt = np.ones(len(t)) if weights is None else weights[t]
    return float((wt * nll).sum() / wt.sum())


def test_upsampling_matches_opencv_bilinear():
    logits = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    up = upsample_logits(logits, (24, 32)).numpy()
    for c in range(3):
        ref = cv2.resize(logits[0, c].numpy(), (32, 24), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(up[0, c], ref, atol=1e-6)


@pytest.mark.parametrize("logit_size", [(6, 8), (24, 8), (24, 32)])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_torch_and_numpy(logit_size, weighted):
    """Logits are upsampled whenever the size differs, also when only one side does
    (the reference resized only when both differed)."""
    g = torch.Generator().manual_seed(0)
    k = 4
    logits = torch.randn(2, k, *logit_size, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (2, 24, 32), generator=g)
    target[0, :5] = 255
    target[1, :, :3] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if weighted else None
    ours = segmentation_loss(logits, target, 255, weights)
    manual = F.interpolate(logits, size=(24, 32), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(manual, target, weight=weights, ignore_index=255)
    assert torch.allclose(ours, ref, rtol=1e-12)
    np_ref = _numpy_ce(manual.numpy(), target.numpy(), 255, None if weights is None else weights.numpy())
    assert ours.item() == pytest.approx(np_ref, rel=1e-10)


def test_loss_ignores_ignored_pixels():
    """With ignored pixels the loss is the mean per-pixel loss over the kept pixels only."""
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 16, 16))
    target[0, :8] = 255
    per_pixel = F.cross_entropy(upsample_logits(logits, (16, 16)), target.clamp(max=2), reduction="none")
    kept = target != 255
    assert segmentation_loss(logits, target).item() == pytest.approx(per_pixel[kept].mean().item(), rel=1e-6)
    assert segmentation_loss(logits, target).item() != pytest.approx(per_pixel.mean().item(), rel=1e-6)


def test_all_ignored_batch_gives_zero_with_a_graph():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 16, 16), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# -- network under functional calls -----------------------------------------------------------
def test_logits_at_quarter_resolution_and_predict_at_input_size():
    task = _tiny_task(k=3)
    net = task.build_network().eval()
    fused = torch.rand(2, 1, 32, 48)
    logits = task.forward(net, _params(net), fused)
    assert logits.shape == (2, 3, 8, 12)
    assert torch.equal(task.predict(net, fused), logits)  # scores, for the evaluator
    pred = task.classify(net, fused)
    assert pred.shape == (2, 32, 48) and pred.dtype == torch.int64
    assert torch.equal(pred, upsample_logits(logits, (32, 48)).argmax(1))
    assert task.classify(net, fused, (64, 96)).shape == (2, 64, 96)


def test_input_gradient_matches_finite_differences():
    """d L_t / d fused by autograd vs torch's finite differences (gradcheck's fast mode compares
    random projections of the Jacobian; float64, train mode)."""
    torch.manual_seed(0)
    task = _tiny_task(k=3, class_weights=[1.0, 2.0, 0.5])
    net = task.build_network().double().train()
    params = _params(net)
    mask = torch.randint(0, 3, (2, 16, 16))
    mask[0, :2] = 255
    fused = torch.rand(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: task.loss(net, params, x, {"mask": mask}), (fused,),
                                    eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True)
    (grad,) = torch.autograd.grad(task.loss(net, params, fused, {"mask": mask}), fused)
    assert grad.abs().sum() > 0


def test_directional_derivative_non_square_label_size():
    torch.manual_seed(1)
    task = _tiny_task(k=4)
    net = task.build_network().double().train()
    params = _params(net)
    mask = torch.randint(0, 4, (1, 32, 48))
    x = torch.rand(1, 1, 32, 48, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(task.loss(net, params, x, {"mask": mask}), x)
    v = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        fd = (task.loss(net, params, x + h * v, {"mask": mask}) - task.loss(net, params, x - h * v, {"mask": mask})) / (2 * h)
    assert (grad * v).sum().item() == pytest.approx(fd.item(), rel=1e-5)


def test_functional_call_uses_the_given_params_and_leaves_the_module_alone():
    torch.manual_seed(2)
    task = _tiny_task(k=3)
    net = task.build_network().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = torch.rand(1, 1, 32, 32)
    batch = {"mask": torch.randint(0, 3, (1, 32, 32))}
    own = task.loss(net, _params(net), fused, batch)
    perturbed = {k: v.clone() for k, v in _params(net).items()}
    perturbed["decode_head.classifier.weight"] += 0.5 * torch.randn_like(perturbed["decode_head.classifier.weight"])
    other = task.loss(net, perturbed, fused, batch)
    assert abs(other.item() - own.item()) > 1e-4
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert task.loss(net, _params(net), fused, batch).item() == pytest.approx(own.item(), rel=1e-6)


def test_outer_update_through_a_one_step_updated_task_net():
    """The engine's outer objective L_t(T'(F2)), T' = theta_T - lr dL_t(T(F1))/dtheta_T taken as
    a first-order (detached) step: its gradient to the meta-test image F2 vs central differences."""
    torch.manual_seed(3)
    task = _tiny_task(k=3)
    net = task.build_network().double().train()
    base = _params(net)
    trainable = [k for k, p in net.named_parameters() if p.requires_grad]
    m1, m2 = torch.randint(0, 3, (1, 16, 16)), torch.randint(0, 3, (1, 16, 16))
    f1 = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    grads = torch.autograd.grad(task.loss(net, base, f1, {"mask": m1}), [base[k] for k in trainable])
    stepped = {k: v.detach() for k, v in base.items()} | {k: (base[k] - 0.1 * g).detach()
                                                         for k, g in zip(trainable, grads)}
    f2 = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(task.loss(net, stepped, f2, {"mask": m2}), f2)
    v, h = torch.randn_like(f2), 1e-6
    with torch.no_grad():
        fd = (task.loss(net, stepped, f2 + h * v, {"mask": m2}) - task.loss(net, stepped, f2 - h * v, {"mask": m2})) / (2 * h)
    assert (g * v).sum().item() == pytest.approx(fd.item(), rel=1e-5)
    assert task.loss(net, stepped, f2, {"mask": m2}).item() != pytest.approx(task.loss(net, base, f2, {"mask": m2}).item())


def test_second_order_through_the_task_net_with_eager_attention():
    """A differentiable inner step of T (not what the engine does) needs double backward,
    which ``attention: eager`` provides: d/dF1 of L_t(T_{theta - lr grad L_t(T_theta(F1))}(F2))."""
    torch.manual_seed(3)
    task = _tiny_task(k=3, attention="eager")
    net = task.build_network().double().train()
    base = _params(net)
    trainable = [k for k, p in net.named_parameters() if p.requires_grad]
    m1, m2 = torch.randint(0, 3, (1, 16, 16)), torch.randint(0, 3, (1, 16, 16))
    f2 = torch.rand(1, 1, 16, 16, dtype=torch.float64)

    def outer(f1, create_graph=True):
        inner = task.loss(net, base, f1, {"mask": m1})
        grads = torch.autograd.grad(inner, [base[k] for k in trainable], create_graph=create_graph)
        updated = dict(base) | {k: base[k] - 0.1 * g for k, g in zip(trainable, grads)}
        return task.loss(net, updated, f2, {"mask": m2})

    f1 = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(outer(f1), f1)
    assert g.abs().sum() > 0
    v, h = torch.randn_like(f1), 1e-5
    fd = (outer((f1 + h * v).detach().requires_grad_(), False) - outer((f1 - h * v).detach().requires_grad_(), False)) / (2 * h)
    assert (g * v).sum().item() == pytest.approx(fd.item(), rel=1e-4)


# -- building offline, sizes, weights ---------------------------------------------------------
def test_builds_with_the_hub_offline_and_no_network():
    code = (
        "import socket\n"
        "def no_net(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = no_net; socket.create_connection = no_net; socket.getaddrinfo = no_net\n"
        "from tdfusion.tasks import create_task\n"
        "net = create_task('seg', {'num_classes': 9}).build_network()\n"
        "print(sum(p.numel() for p in net.parameters()), net.config.num_channels, net.config.hidden_sizes)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    count, channels, hidden = out.stdout.split(maxsplit=2)
    assert channels == "1" and hidden.strip() == "[32, 64, 160, 256]"
    assert 3.6e6 < int(count) < 3.8e6   # MiT-b0 SegFormer, about 3.7 M parameters


@pytest.mark.parametrize("variant,total,decoder", [("b0", 3.8, 0.4), ("b1", 13.7, 0.6), ("b2", 27.5, 3.3)])
def test_variant_sizes_match_the_segformer_paper(variant, total, decoder):
    """SegFormer paper, Table 1 (ADE20K: 150 classes, RGB input): parameters in millions."""
    net = build_segformer(150, variant, num_channels=3)
    n_total = sum(p.numel() for p in net.parameters()) / 1e6
    n_dec = sum(p.numel() for k, p in net.named_parameters() if k.startswith("decode_head")) / 1e6
    assert round(n_total, 1) == total and round(n_dec, 1) == decoder


def test_loads_a_save_pretrained_folder_with_rgb_input_and_other_classes(tmp_path):
    """An RGB, 150-class checkpoint: the encoder on a grey image equals the RGB encoder on
    that image replicated to 3 channels; the classifier is re-initialised with a warning."""
    torch.manual_seed(4)
    src = build_segformer(150, "b0", num_channels=3, **TINY).eval()
    with torch.no_grad():  # a non-zero bias, else the LayerNorm after the embedding hides any scale error
        src.segformer.stages[0].patch_embeddings.proj.bias.normal_()
    src.save_pretrained(tmp_path / "hf")
    task = create_task("seg", {"num_classes": 5, "weights": str(tmp_path / "hf")})
    with pytest.warns(UserWarning, match=r"randomly initialised: decode_head\.classifier"):
        net = task.build_network()
    net.eval()
    assert net.config.hidden_sizes == TINY["hidden_sizes"]   # architecture from the folder
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ours = net.segformer(x).last_hidden_state
        ref = src.segformer(x.repeat(1, 3, 1, 1)).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(net.decode_head.linear_fuse.weight, src.decode_head.linear_fuse.weight)


def test_loads_its_own_state_dict(tmp_path):
    torch.manual_seed(5)
    task = _tiny_task(k=3)
    net = task.build_network().eval()
    torch.save(net.state_dict(), tmp_path / "seg.pt")
    task2 = _tiny_task(k=3, weights=str(tmp_path / "seg.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net2 = task2.build_network().eval()
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(task.classify(net, x), task2.classify(net2, x))
    assert torch.equal(net(x).logits, net2(x).logits)


# transformers 4 names of SegFormer weights (checkpoints saved before transformers 5).
_OLD_NAMES = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"), (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]


def test_loads_a_state_dict_with_transformers_4_names(tmp_path):
    torch.manual_seed(6)
    net = _tiny_task(k=3).build_network()
    old = {}
    for k, v in net.state_dict().items():
        for pat, rep in _OLD_NAMES:
            k = re.sub(pat, rep, k)
        old[k] = v
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in old
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    net2 = _tiny_task(k=3, weights=str(tmp_path / "old.pth")).build_network()
    for k, v in net.state_dict().items():
        assert torch.equal(net2.state_dict()[k], v), k


def test_bad_weights_are_reported_with_the_file(tmp_path):
    b1 = build_segformer(3, "b1")
    torch.save(b1.state_dict(), tmp_path / "b1.pt")
    with pytest.raises(TDFusionError, match=r"b1\.pt: tensor segformer\.stages\.0\.patch_embeddings\.proj\.weight "
                                            r"has shape \(64, 1, 7, 7\) but this network expects \(32, 1, 7, 7\)"):
        create_task("seg", {"num_classes": 3, "weights": str(tmp_path / "b1.pt")}).build_network()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TDFusionError, match=r"junk\.pt: not a readable weights file"):
        _tiny_task(weights=str(tmp_path / "junk.pt")).build_network()
    with pytest.raises(TDFusionError, match=r"missing\.pt: no such weights file"):
        _tiny_task(weights=str(tmp_path / "missing.pt")).build_network()


def test_task_options_are_validated():
    with pytest.raises(ValueError, match="unknown seg task option"):
        create_task("seg", {"num_classes": 3, "colour": 1})
    with pytest.raises(ValueError, match="class_weights has 2 values for 3 classes"):
        create_task("seg", {"num_classes": 3, "class_weights": [1, 2]})
    with pytest.raises(ValueError, match="unknown variant"):
        create_task("seg", {"num_classes": 3, "variant": "b9"})
    with pytest.raises(TDFusionError, match="num_classes is not set"):
        create_task("seg", {}).build_network()
    task = create_task("seg", {"class_names": ["a", "b", "c"]})
    assert task.num_classes == 3 and task.target_kind == "mask"


# -- metrics ----------------------------------------------------------------------------------
def _reference_metrics(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> dict:
    """Per-class counts with boolean masks, no confusion matrix."""
    valid = target != ignore
    out = {}
    for c in range(k):
        if c == ignore:
            continue
        tp = int(((pred == c) & (target == c) & valid).sum())
        fp = int(((pred == c) & (target != c) & valid).sum())
        fn = int(((pred != c) & (target == c) & valid).sum())
        out[c] = (tp / (tp + fp + fn) if tp + fp + fn else None, tp / (tp + fn) if tp + fn else None)
    correct = int(((pred == target) & valid).sum())
    return {"per_class": out, "pixel_acc": correct / int(valid.sum())}


@pytest.mark.parametrize("ignore", [255, 0])
def test_metrics_against_per_class_counting(ignore):
    rng = np.random.default_rng(7)
    k = 6
    target = rng.integers(0, k, (3, 20, 30))
    target[target == 4] = 1                    # class 4: never in the ground truth ...
    pred = rng.integers(0, k, (3, 20, 30))
    pred[pred == 4] = 2                        # ... and never predicted -> None, not in the means
    target[target == 5] = 3                    # class 5: predicted but absent -> IoU 0, Acc None
    target[:, :3] = ignore                     # ignored pixels
    target[0, 5:8, 5:8] = ignore
    names = [f"c{i}" for i in range(k)]
    ev = SegmentationEvaluator(k, names, ignore)
    ev.update(torch.from_numpy(pred[:2]), {"mask": torch.from_numpy(target[:2])})
    ev.update(torch.from_numpy(pred[2:]), {"mask": torch.from_numpy(target[2:])})
    got = ev.compute()
    ref = _reference_metrics(pred, target, k, ignore)
    assert got["pixel_acc"] == pytest.approx(ref["pixel_acc"], rel=1e-12)
    ious, accs = [], []
    for c, (iou, acc) in ref["per_class"].items():
        entry = got["per_class"][names[c]]
        for key, want in (("IoU", iou), ("Acc", acc)):
            assert (entry[key] is None) == (want is None), (c, key)
            if want is not None:
                assert entry[key] == pytest.approx(want, rel=1e-12)
        ious += [iou] if iou is not None else []
        accs += [acc] if acc is not None else []
    assert got["per_class"]["c4"] == {"IoU": None, "Acc": None}
    assert got["per_class"]["c5"]["IoU"] == 0.0 and got["per_class"]["c5"]["Acc"] is None
    assert got["mIoU"] == pytest.approx(np.mean(ious), rel=1e-12)
    assert got["mAcc"] == pytest.approx(np.mean(accs), rel=1e-12)
    assert set(got["per_class"]) == {f"c{c}" for c in range(k) if c != ignore}
    assert set(got) == {"mIoU", "mAcc", "pixel_acc", "per_class"}


def test_metrics_by_hand():
    # label: 0 0 1 1 / 2 2 255 255     prediction: 0 1 1 1 / 2 0 2 2
    # class 0: TP 1, FP 1 (a 2 taken for 0), FN 1 (a 0 taken for 1) -> IoU 1/3, Acc 1/2
    # class 1: TP 2, FP 1, FN 0 -> IoU 2/3, Acc 1;  class 2: TP 1, FN 1 -> IoU 1/2, Acc 1/2
    # class 3: absent, never predicted -> null;  pixel accuracy 4 of 6 evaluated pixels
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 2]]])
    r = segmentation_metrics(confusion_matrix(pred, target, 4), ["a", "b", "c", "d"])
    assert r["per_class"]["a"] == pytest.approx({"IoU": 1 / 3, "Acc": 1 / 2})
    assert r["per_class"]["b"] == pytest.approx({"IoU": 2 / 3, "Acc": 1.0})
    assert r["per_class"]["c"] == pytest.approx({"IoU": 1 / 2, "Acc": 1 / 2})
    assert r["per_class"]["d"] == {"IoU": None, "Acc": None}
    assert r["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 6)


def test_evaluator_resizes_predictions_to_the_label_and_rejects_bad_labels():
    pred = torch.randint(0, 3, (1, 4, 4))
    target = pred.repeat_interleave(2, 1).repeat_interleave(2, 2)
    ev = SegmentationEvaluator(3)
    ev.update(pred, {"mask": target})
    assert ev.compute()["pixel_acc"] == 1.0 and int(ev.confusion.sum()) == 64
    with pytest.raises(TDFusionError, match=r"label value\(s\) 7 outside the class range 0\.\.2"):
        ev.update(pred, {"mask": torch.full((1, 4, 4), 7)})
    empty = SegmentationEvaluator(3).compute()
    assert empty["mIoU"] is None and empty["pixel_acc"] is None


def test_evaluator_upsamples_class_scores_to_the_label_bilinearly():
    """Scores at a quarter of the label size are compared as OpenCV's bilinear resize of each
    class's score map (half-pixel centres, as align_corners=False) followed by the arg-max."""
    import cv2

    torch.manual_seed(3)
    scores = torch.randn(2, 4, 6, 8)
    target = torch.randint(0, 4, (2, 24, 32))
    ev = SegmentationEvaluator(4)
    ev.update(scores, {"mask": target})
    up = np.stack([np.stack([cv2.resize(scores[b, k].numpy(), (32, 24), interpolation=cv2.INTER_LINEAR)
                             for k in range(4)]) for b in range(2)])
    expected = up.argmax(1)
    assert (expected != np.repeat(np.repeat(expected[:, ::4, ::4], 4, 1), 4, 2)).any()  # not a nearest map
    assert ev.compute()["pixel_acc"] == pytest.approx((expected == target.numpy()).mean())


def test_task_evaluator_end_to_end_on_a_batch():
    task = _tiny_task(k=3, class_names=["x", "y", "z"])
    net = task.build_network().eval()
    fused = torch.rand(2, 1, 32, 32)
    mask = torch.randint(0, 3, (2, 32, 32))
    ev = task.evaluator()
    ev.update(task.predict(net, fused), {"mask": mask})
    r = ev.compute()
    assert set(r["per_class"]) == {"x", "y", "z"}
    pred = task.classify(net, fused)
    assert r["pixel_acc"] == pytest.approx((pred == mask).double().mean().item())
