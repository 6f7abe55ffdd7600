"""The detection task head: YOLOv8 under functional calls, its loss and gradients, NMS, mAP.

References: finite differences (gradients), ultralytics' own loss path and metric code
(``DetectionModel.loss``, ``ap_per_class`` with its validator's matching), and APs worked
out by hand for tiny cases.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tdfusion.tasks import create_task
from tdfusion.tasks.det import coco_map
from tdfusion.tasks.yolo import PAD_VALUE, decode_predictions
from tdfusion.errors import TDFusionError

REPO = Path(__file__).resolve().parents[1]

# Two images, three objects; (image, class, cx, cy, w, h) normalised.
BOXES = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [0, 1, 0.7, 0.6, 0.3, 0.25], [1, 1, 0.5, 0.5, 0.4, 0.5]])


@pytest.fixture(scope="module")
def task_net():
    torch.manual_seed(0)
    task = create_task("det", {"num_classes": 2, "class_names": ["person", "car"]})
    return task, task.build_network().train()


def all_params(net):
    return dict(net.named_parameters()) | dict(net.named_buffers())


def test_build_and_run_without_network_access(tmp_path):
    """Importing, building, the loss and NMS touch no socket; settings land in YOLO_CONFIG_DIR."""
    script = textwrap.dedent("""
        import os, socket
        attempts = []
        def guard(*args, **kwargs):
            attempts.append(args)
            raise OSError("network access blocked by the test")
        socket.socket.connect = socket.socket.connect_ex = guard
        socket.create_connection = socket.getaddrinfo = guard
        import torch
        from tdfusion.tasks import create_task
        task = create_task("det", {"num_classes": 3})
        net = task.build_network()
        fused = torch.rand(1, 1, 64, 96)
        params = dict(net.named_parameters()) | dict(net.named_buffers())
        loss = task.loss(net, params, fused, {"boxes": torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]])})
        assert torch.isfinite(loss)
        task.predict(net, fused)
        print("attempts", len(attempts), "offline", os.environ.get("YOLO_OFFLINE"))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "cfg"), HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "attempts 0 offline 1" in out.stdout
    assert (tmp_path / "cfg" / "Ultralytics" / "settings.json").is_file()
    assert not (tmp_path / "home").exists()


def test_network_shape_and_variant(task_net):
    task, net = task_net
    assert 2.9e6 < sum(p.numel() for p in net.parameters()) < 3.1e6        # YOLOv8-n, about 3.0 M
    assert net.model[0].conv.in_channels == 1 and net.model[-1].nc == 2
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["model.22.dfl.conv.weight"]                            # the DFL projection
    with pytest.raises(TDFusionError, match="unknown YOLOv8 variant 'q'"):
        create_task("det", {"num_classes": 2, "variant": "q"}).build_network()
    with pytest.raises(TDFusionError, match="number of classes is unknown"):
        create_task("det").build_network()
    with pytest.raises(ValueError, match="class_names lists 1 classes but num_classes is 2"):
        create_task("det", {"num_classes": 2, "class_names": ["a"]})


def test_loss_matches_ultralytics_model_loss(task_net):
    """Our functional loss on an 80x96 image (padded to 96x96) equals ultralytics' own
    ``DetectionModel.loss`` on the padded image with boxes re-normalised by hand in pixels."""
    task, net = task_net
    torch.manual_seed(1)
    fused = torch.rand(2, 1, 80, 96)
    ours_sum = create_task("det", {"num_classes": 2, "loss_reduction": "sum"}).loss(net, all_params(net), fused,
                                                                                    {"boxes": BOXES})
    ours_mean = task.loss(net, all_params(net), fused, {"boxes": BOXES})
    padded = torch.full((2, 1, 96, 96), PAD_VALUE)
    padded[..., :80, :] = fused
    px = BOXES[:, 2:] * torch.tensor([96.0, 80.0, 96.0, 80.0])       # pixels of the 80x96 image
    batch = {"img": padded, "batch_idx": BOXES[:, 0], "cls": BOXES[:, 1:2], "bboxes": px / 96.0}
    ref = copy.deepcopy(net)
    ref.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    ref.criterion = None
    ref_loss, _ = ref.loss(batch)
    assert float(ours_sum.detach()) == pytest.approx(float(ref_loss.sum().detach()), rel=1e-5)
    assert float(ours_mean.detach()) == pytest.approx(float(ref_loss.sum().detach()) / 2, rel=1e-5)


class FrozenAssigner:
    """ultralytics assigns targets from *detached* predictions, so its gradient treats the
    assignment as a constant; finite differences must hold it fixed too."""

    def __init__(self, inner):
        self.inner, self.out = inner, None

    def __call__(self, *args, **kwargs):
        if self.out is None:
            self.out = self.inner(*args, **kwargs)
        return self.out


def test_loss_gradient_matches_finite_differences(task_net):
    task64 = create_task("det", {"num_classes": 2})
    net = copy.deepcopy(task_net[1]).double().train()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # ultralytics allocates its loss vector in the default dtype
    try:
        task64.criterion(net).assigner = FrozenAssigner(task64.criterion(net).assigner)
        params = all_params(net)
        torch.manual_seed(2)
        fused = torch.rand(2, 1, 80, 96, requires_grad=True)   # 80 rows: exercises the padding
        boxes = BOXES.double()
        weight = "model.22.cv2.0.0.conv.weight"                 # a box-branch conv of the head

        def loss_at(x, w=None):
            p = dict(params)
            if w is not None:
                p[weight] = w
            with torch.no_grad():
                return float(task64.loss(net, p, x, {"boxes": boxes}))

        loss = task64.loss(net, params, fused, {"boxes": boxes})
        g_img, g_w = torch.autograd.grad(loss, [fused, params[weight]])
        assert g_img.abs().sum() > 0
        h = 1e-6
        for i in g_img.flatten().abs().topk(3).indices.tolist():
            x = fused.detach().clone().flatten()
            x[i] += h
            up = loss_at(x.view_as(fused))
            x[i] -= 2 * h
            down = loss_at(x.view_as(fused))
            assert (up - down) / (2 * h) == pytest.approx(float(g_img.flatten()[i]), rel=1e-3)
        j = int(g_w.flatten().abs().argmax())
        w = params[weight].detach().clone().flatten()
        w[j] += h
        up = loss_at(fused.detach(), w.view_as(params[weight]))
        w[j] -= 2 * h
        down = loss_at(fused.detach(), w.view_as(params[weight]))
        assert (up - down) / (2 * h) == pytest.approx(float(g_w.flatten()[j]), rel=1e-3)
    finally:
        torch.set_default_dtype(previous)


def test_functional_call_with_perturbed_params_leaves_module_unchanged(task_net):
    task, net = task_net
    torch.manual_seed(3)
    fused = torch.rand(2, 1, 64, 96)
    batch = {"boxes": BOXES}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    noise = {k: 0.05 * torch.randn_like(p) for k, p in net.named_parameters() if p.requires_grad}
    # The engine's one-step-updated copy: new parameters, the module's own buffers.
    perturbed = all_params(net) | {k: p + noise[k] for k, p in net.named_parameters() if k in noise}
    loss_perturbed = task.loss(net, perturbed, fused, batch)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    # Reference: a copy of the module whose parameters really were moved, called plainly.
    moved = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in moved.named_parameters():
            if k in noise:
                p += noise[k]
    loss_moved = task.loss(moved, all_params(moved), fused, batch)
    loss_own = task.loss(net, all_params(net), fused, batch)
    assert loss_perturbed.detach().item() == pytest.approx(loss_moved.detach().item(), rel=1e-5)
    assert abs(loss_perturbed.detach().item() - loss_own.detach().item()) > 1e-3
    # An ordinary step (the module's own parameters) moves the BatchNorm running statistics.
    assert not torch.equal(net.state_dict()["model.0.bn.running_mean"], before["model.0.bn.running_mean"])
    net.load_state_dict(before)


def test_decode_predictions_nms_and_clipping():
    # Anchors: A (class 0, 0.9) xywh (50, 40, 20, 20); B overlaps A (IoU 0.74, class 0, 0.8) and is
    # suppressed; C (class 1, 0.7) xywh (305, 10, 40, 40) is clipped to the 240x320 image.
    raw = torch.zeros(1, 6, 3)
    raw[0, :4] = torch.tensor([[50.0, 52.0, 305.0], [40.0, 41.0, 10.0], [20.0, 20.0, 40.0], [20.0, 20.0, 40.0]])
    raw[0, 4] = torch.tensor([0.9, 0.8, 0.0])
    raw[0, 5] = torch.tensor([0.0, 0.0, 0.7])
    (det,) = decode_predictions(raw, (240, 320), conf=0.25, iou=0.5)
    assert det["image_size"] == (240, 320)
    torch.testing.assert_close(det["boxes"], torch.tensor([[40.0, 30.0, 60.0, 50.0], [285.0, 0.0, 320.0, 30.0]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7]))
    assert det["classes"].tolist() == [0, 1]


def test_predict_returns_boxes_in_fused_pixels(task_net):
    task, net = task_net
    preds = task.predict(net, torch.rand(2, 1, 80, 96))
    assert len(preds) == 2 and net.training                 # mode restored
    for p in preds:
        assert p["image_size"] == (80, 96) and len(p["boxes"]) <= task.config["max_det"]
        if len(p["boxes"]):
            assert p["boxes"][:, 2].max() <= 96 and p["boxes"][:, 3].max() <= 80 and p["boxes"].min() >= 0


# -- mAP --------------------------------------------------------------------------------------------------

def test_map_hand_computed_cases():
    names = ["person", "car"]
    g = {"boxes": np.array([[0.0, 0.0, 100.0, 100.0]]), "classes": np.array([0]), "image_size": (200, 300)}
    none = {"boxes": np.zeros((0, 4)), "classes": np.zeros(0, int), "image_size": (200, 300)}

    def dets(boxes, scores, classes):
        return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores, float),
                "classes": np.array(classes, int)}

    # One GT, one detection with IoU 0.62 (box 100 x 62 inside it): matched at IoU 0.5, 0.55, 0.6 only,
    # so AP50 = 1, AP75 = 0, AP50:95 = 3/10. The car class has no ground truth: None, and left out.
    r = coco_map([g], [dets([[0, 0, 100, 62], [200, 100, 250, 150]], [0.8, 0.9], [0, 1])], names)
    assert (r["mAP50"], r["mAP75"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert r["mAP50_95"] == pytest.approx(0.3)
    assert r["per_class"]["car"] == {"AP50": None, "AP75": None, "AP50_95": None, "instances": 0}
    assert r["per_class"]["person"]["instances"] == 1
    # An image without objects still counts: its false positive (0.9) outranks the true positive
    # (0.8): precision 1/2 at recall 1, so AP50 = 0.5 (101-point interpolation).
    r = coco_map([g, none], [dets([[0, 0, 100, 100]], [0.8], [0]), dets([[5, 5, 50, 50]], [0.9], [0])], names)
    assert r["mAP50"] == pytest.approx(0.5) and r["images"] == 2
    # No detections at all: 0; no ground truth at all: undefined.
    assert coco_map([g], [dets([], [], [])], names)["mAP50_95"] == 0.0
    assert coco_map([none], [dets([[0, 0, 9, 9]], [0.5], [0])], names)["mAP50"] is None


def _scenario(seed: int, n_images: int = 80, k: int = 3):
    """Random GT (class k-1 never occurs), jittered detections, class confusions, false positives."""
    rng = np.random.default_rng(seed)
    gt, dt = [], []
    for _ in range(n_images):
        h, w = 120, 200
        n = int(rng.integers(0, 5))
        cls = rng.integers(0, k - 1, n)
        x1, y1 = rng.uniform(0, w - 40, n), rng.uniform(0, h - 30, n)
        g = np.stack([x1, y1, x1 + rng.uniform(8, 40, n), y1 + rng.uniform(8, 30, n)], 1)
        gt.append({"boxes": g, "classes": cls, "image_size": (h, w)})
        boxes, scores, classes = [], [], []
        for b, c in zip(g, cls):
            if rng.random() < 0.85:
                boxes.append(b + rng.normal(0, 3.0, 4))
                scores.append(rng.uniform(0.3, 1.0))
                classes.append(c if rng.random() < 0.9 else (c + 1) % k)
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, w - 30), rng.uniform(0, h - 30)
            boxes.append([x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)])
            scores.append(rng.uniform(0.0, 0.8))
            classes.append(int(rng.integers(0, k)))
        dt.append({"boxes": np.array(boxes).reshape(-1, 4), "scores": np.array(scores),
                   "classes": np.array(classes, int)})
    return gt, dt


def _ultralytics_map(gt, dt):
    """mAP with ultralytics' validator matching and ``ap_per_class``."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    validator = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pred_cls, target_cls = [], [], [], []
    for g, d in zip(gt, dt):
        target_cls.append(g["classes"])
        order = np.argsort(-d["scores"], kind="stable")
        if not len(order):
            continue
        boxes, classes = torch.tensor(d["boxes"][order]), torch.tensor(d["classes"][order])
        if len(g["boxes"]):
            iou = box_iou(torch.tensor(g["boxes"]), boxes)
            tp = BaseValidator.match_predictions(validator, classes, torch.tensor(g["classes"]), iou).numpy()
        else:
            tp = np.zeros((len(order), 10), bool)
        tps.append(tp)
        confs.append(d["scores"][order])
        pred_cls.append(d["classes"][order])
    out = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_cls),
                       np.concatenate(target_cls))
    ap, classes = out[5], out[6]
    return ap[:, 0].mean(), ap.mean(), dict(zip(classes.tolist(), ap[:, 0].tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_map_agrees_with_ultralytics_metrics(seed):
    gt, dt = _scenario(seed)
    ours = coco_map(gt, dt, ["a", "b", "c"])
    map50, map50_95, per_class50 = _ultralytics_map(gt, dt)
    assert 0.2 < ours["mAP50"] < 0.95                      # a non-trivial case
    assert ours["mAP50"] == pytest.approx(map50, abs=0.01)
    assert ours["mAP50_95"] == pytest.approx(map50_95, abs=0.01)
    for cid, name in enumerate("ab"):
        assert ours["per_class"][name]["AP50"] == pytest.approx(per_class50[cid], abs=0.02)
    assert ours["per_class"]["c"]["AP50"] is None and 2 not in per_class50


def test_evaluator_scales_task_size_predictions_to_the_original_image(task_net):
    task, _ = task_net
    # GT normalised; the image was 480x640 and the task saw 240x320. A detection of the
    # second object made on the 240x320 input, 2 px too wide there (4 px in the original).
    batch = {"boxes": torch.tensor([[0, 0, 0.25, 0.5, 0.1, 0.2], [0, 1, 0.5, 0.75, 0.2, 0.1]]),
             "sizes": [(480, 640)], "stems": ["x"]}
    preds = [{"boxes": torch.tensor([[64.0, 96.0, 96.0, 144.0], [128.0, 168.0, 194.0, 192.0]]),
              "scores": torch.tensor([0.9, 0.8]), "classes": torch.tensor([0, 1]), "image_size": (240, 320)}]
    ev = task.evaluator()
    ev.update(preds, batch)
    np.testing.assert_allclose(ev.gt[0]["boxes"], [[128, 192, 192, 288], [256, 336, 384, 384]])
    np.testing.assert_allclose(ev.detections[0]["boxes"], [[128, 192, 192, 288], [256, 336, 388, 384]])
    r = ev.compute()
    # car: IoU = 128*48 / (132*48) = 0.97 -> matched at every threshold; mAP 1.
    assert r["mAP50_95"] == pytest.approx(1.0) and r["per_class"]["car"]["instances"] == 1


# -- weights -------------------------------------------------------------------------------------------------

def test_weights_state_dict_round_trip(task_net, tmp_path):
    _, net = task_net
    path = tmp_path / "t.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    loaded = create_task("det", {"num_classes": 2, "weights": str(path)}).build_network()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_weights_from_rgb_ultralytics_checkpoint(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    rgb = DetectionModel("yolov8n.yaml", ch=3, nc=5, verbose=False)
    path = tmp_path / "yolov8n_rgb.pt"
    torch.save({"model": rgb, "epoch": 3}, path)             # how ultralytics stores checkpoints
    with pytest.warns(UserWarning, match="keep their fresh"):
        # A pickled model object: read only with the opt-in (tests/test_trust_weights.py).
        net = create_task("det", {"num_classes": 2, "weights": str(path), "trust_weights": True}).build_network()
    # a grey image through the folded conv == the same image replicated to RGB through the original
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(net.model[0].conv(x), rgb.model[0].conv(x.expand(1, 3, 8, 8)))
    assert torch.equal(net.state_dict()["model.4.m.0.cv1.conv.weight"], rgb.state_dict()["model.4.m.0.cv1.conv.weight"])
    for bad, message in ((tmp_path / "missing.pt", "no such task weights file"), (tmp_path / "junk.pt", "not a readable weights file")):
        if bad.name == "junk.pt":
            bad.write_bytes(b"not a checkpoint")
        with pytest.raises(TDFusionError, match=message):
            create_task("det", {"num_classes": 2, "weights": str(bad)}).build_network()


def test_loss_under_bfloat16_autocast_matches_float32(task_net):
    """The fusion phase under ``train.precision=bf16`` hands the loss a bfloat16 image; the
    targets must stay float32 (the ultralytics loss writes them into float32 buffers; a
    bfloat16 target failed there, seen on an H200 with ``bench --precision bfloat16``)."""
    task, net = task_net
    torch.manual_seed(1)
    fused = torch.rand(2, 1, 80, 96)
    ref = task.loss(net, all_params(net), fused, {"boxes": BOXES})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = task.loss(net, all_params(net), fused.bfloat16(), {"boxes": BOXES})
    assert torch.isfinite(low)
    assert float(low.detach()) == pytest.approx(float(ref.detach()), rel=0.05)
