"""Checkpoints (tdfusion.checkpoint): published ReFusion files and the toolkit format.

Independent references: the published files themselves (their twin keys, their tensor
count), ``torch.load(weights_only=True)``, and outputs of the network before saving.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tdfusion.checkpoint import (
    FORMAT, VERSION, convert_refusion_state_dict, load_checkpoint, load_fusion_net, load_module,
    module_record, save_checkpoint, trained_lossgen,
)
from tdfusion.errors import TDFusionError
from tdfusion.nets import FusionNet, LossGenerator

TASKS = ("IVIF", "MIF", "MFIF", "MEIF")


pytestmark = pytest.mark.usefixtures("one_thread")


def _published(shared_data, task):
    return shared_data / "refusion" / "models" / f"ReFusion_{task}.pth"


def _sources(h=10, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


# ---------------------------------------------------------------- published ReFusion files

@pytest.mark.parametrize("task", TASKS)
def test_published_checkpoint_converts(shared_data, task):
    path = _published(shared_data, task)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    twins = [k for k in raw if ".conv." in k]
    assert twins, "the published files are expected to carry x.conv.weight twins"
    unique_numel = sum(v.numel() for k, v in raw.items() if ".conv." not in k)

    net, ckpt = load_fusion_net(path)
    assert ckpt["fusion"]["config"] == FusionNet().config
    assert sum(p.numel() for p in net.parameters()) == unique_numel
    assert not net.training
    # Every converted tensor is a tensor of the file (a renaming, not a re-computation).
    file_tensors = [v for k, v in raw.items() if ".conv." not in k]
    for name, p in net.named_parameters():
        assert any(p.shape == t.shape and torch.equal(p, t) for t in file_tensors), name


def test_published_checkpoints_differ(shared_data):
    """Guards against the loader silently returning one fixed set of weights."""
    w = [load_fusion_net(_published(shared_data, t))[0].embed_a.weight for t in TASKS]
    for i in range(len(w)):
        for j in range(i + 1, len(w)):
            assert not torch.equal(w[i], w[j])


def test_corrupted_twin_is_detected(shared_data, tmp_path):
    raw = torch.load(_published(shared_data, "IVIF"), map_location="cpu", weights_only=True)
    twin = next(k for k in raw if k.endswith(".conv.weight") and "encoder2" in k)
    raw[twin] = raw[twin].clone()
    raw[twin].view(-1)[0] += 0.5
    bad = tmp_path / "ReFusion_bad.pth"
    torch.save(raw, bad)
    with pytest.raises(TDFusionError) as info:
        load_fusion_net(bad)
    assert str(bad) in str(info.value) and twin in str(info.value)


def test_twin_without_original_is_detected(shared_data, tmp_path):
    raw = torch.load(_published(shared_data, "MIF"), map_location="cpu", weights_only=True)
    del raw["FM.project_E.weight"]  # keep only its twin FM.project_E.conv.weight
    bad = tmp_path / "missing_original.pth"
    torch.save(raw, bad)
    with pytest.raises(TDFusionError, match="missing_original.pth"):
        load_fusion_net(bad)


def test_truncated_published_file(shared_data, tmp_path):
    data = _published(shared_data, "MFIF").read_bytes()
    bad = tmp_path / "half.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TDFusionError, match="half.pth"):
        load_fusion_net(bad)


def test_convert_infers_a_smaller_architecture():
    """A reference-layout state_dict of another size gives that size's config."""
    torch.manual_seed(0)
    small = FusionNet(dim=8, num_blocks=1, heads=2)
    record = module_record("fusion", small)["state_dict"]
    # Build a reference-layout dict by hand for the two keys the inference reads.
    sd = {"project_in_1.weight": record["embed_a.weight"], "project_in_1.conv.weight": record["embed_a.weight"],
          "FM.temperature1": record["afm.temperature_a"],
          "encoder1.0.ffn.project_in.weight": record["encoder_a.0.ffn.expand.point.weight"]}
    config, converted = convert_refusion_state_dict(sd)
    assert config == dict(dim=8, num_blocks=1, heads=2, ffn_expansion=2.0)
    assert set(converted) == {"embed_a.weight", "afm.temperature_a", "encoder_a.0.ffn.expand.point.weight"}


# ---------------------------------------------------------------- toolkit format

def _small_nets():
    torch.manual_seed(1)
    return FusionNet(dim=8, num_blocks=1, heads=2).eval(), LossGenerator(dim=8, num_blocks=1, heads=2, pairs=2).eval()


def test_toolkit_round_trip(tmp_path):
    fusion, lossgen = _small_nets()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"fusion": module_record("fusion", fusion), "lossgen": module_record("lossgen", lossgen),
                     "task": {"name": "seg", "config": {"num_classes": 5}, "state_dict": {}},
                     "epoch": 7, "step": 1234}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left

    plain = torch.load(path, weights_only=True)  # no training code or pickled classes needed
    assert plain["format"] == FORMAT and plain["version"] == VERSION
    assert plain["epoch"] == 7 and plain["step"] == 1234 and plain["task"]["name"] == "seg"
    assert plain["fusion"]["config"] == fusion.config

    net, ckpt = load_fusion_net(path)
    a, b = _sources()
    with torch.no_grad():
        assert torch.equal(net(a, b), fusion(a, b))
        g = load_module(ckpt, "lossgen", str(path)).eval()
        assert torch.equal(g(a, b), lossgen(a, b))


def test_loaded_net_is_independent_of_saved_module(tmp_path):
    fusion, _ = _small_nets()
    path = tmp_path / "c.pt"
    save_checkpoint({"fusion": module_record("fusion", fusion)}, path)
    net, _ = load_fusion_net(path)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert not torch.equal(next(net.parameters()), next(fusion.parameters()))


# ---------------------------------------------------------------- bad checkpoints

def _assert_error_names(path, match=None):
    with pytest.raises(TDFusionError, match=match) as info:
        load_fusion_net(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    _assert_error_names(tmp_path / "nope.pt", "no such")


def test_random_bytes(tmp_path):
    p = tmp_path / "random.pth"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_error_names(p, "not a readable checkpoint")


def test_foreign_pickle_is_refused_not_executed(tmp_path):
    import datetime
    p = tmp_path / "foreign.pkl"
    p.write_bytes(pickle.dumps(datetime.date(2024, 1, 1), protocol=2))
    _assert_error_names(p, "not a readable checkpoint")


@pytest.mark.parametrize("payload", [{"weights": torch.zeros(3)}, [1, 2, 3], {"format": "other"}],
                         ids=["dict", "list", "other-format"])
def test_not_a_checkpoint(tmp_path, payload):
    p = tmp_path / "thing.pt"
    torch.save(payload, p)
    _assert_error_names(p, "neither a tdfusion checkpoint")


def test_weights_of_another_architecture(tmp_path):
    torch.manual_seed(0)
    small = FusionNet(dim=8, num_blocks=1, heads=2)
    record = module_record("fusion", small)
    record["config"] = dict(FusionNet().config)  # claims dim 16, holds dim 8 weights
    p = tmp_path / "mismatch.pt"
    save_checkpoint({"fusion": record}, p)
    _assert_error_names(p, "do not match")


def test_unknown_arch_and_bad_config(tmp_path):
    fusion, _ = _small_nets()
    rec = module_record("fusion", fusion)
    p = tmp_path / "arch.pt"
    save_checkpoint({"fusion": {**rec, "arch": "no-such-net"}}, p)
    _assert_error_names(p, "cannot build")
    save_checkpoint({"fusion": {**rec, "config": {**rec["config"], "colour": True}}}, p)
    _assert_error_names(p, "cannot build")


@pytest.mark.parametrize("field", ["arch", "config", "state_dict"])
def test_missing_record_field(tmp_path, field):
    fusion, _ = _small_nets()
    rec = module_record("fusion", fusion)
    del rec[field]
    p = tmp_path / "field.pt"
    save_checkpoint({"fusion": rec}, p)
    _assert_error_names(p, field)


def test_no_fusion_record(tmp_path):
    _, lossgen = _small_nets()
    p = tmp_path / "gonly.pt"
    save_checkpoint({"lossgen": module_record("lossgen", lossgen)}, p)
    _assert_error_names(p, "no fusion network")


def test_newer_version(tmp_path):
    fusion, _ = _small_nets()
    p = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "version": VERSION + 1, "fusion": module_record("fusion", fusion)}, p)
    _assert_error_names(p, "newer")


def test_trained_lossgen_is_none_for_the_fixed_weight_ablation(tmp_path):
    """The fixed-weight ablation saves a G it never trained: no G to report for it."""
    fusion = module_record("fusion", FusionNet(dim=8, num_blocks=1, heads=2))
    g = LossGenerator(dim=8, num_blocks=1, heads=2)
    found = {}
    for name, fixed, with_g in (("used", False, True), ("fixed", True, True), ("none", False, False)):
        ckpt = {"fusion": fusion, "extra": {"config": {"loss": {"fixed_weights": fixed}}}}
        if with_g:
            ckpt["lossgen"] = module_record("lossgen", g)
        save_checkpoint(ckpt, tmp_path / f"{name}.pt")
        found[name] = trained_lossgen(load_checkpoint(tmp_path / f"{name}.pt"))
    assert found["fixed"] is None and found["none"] is None
    assert not found["used"].training
    for key, value in g.state_dict().items():
        assert torch.equal(found["used"].state_dict()[key], value)
