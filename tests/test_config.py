"""Run configs: inheritance, overrides, validation with suggestions, recipe lookup."""
from __future__ import annotations

import pytest

from tdfusion.config import CONFIG_DIR, apply_overrides, find_recipe, load_config, validate
from tdfusion.errors import TDFusionError


def test_every_shipped_config_is_valid():
    schema = load_config(None)
    configs = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(path)
        validate(cfg, schema)
        assert set(cfg) == set(schema), path.name  # inheritance filled every section


def test_inheritance_child_wins_and_keeps_the_rest(tmp_path):
    (tmp_path / "parent.yaml").write_text("a: {x: 1, y: 2}\nb: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: parent.yaml\na: {y: 20}\n")
    assert load_config(tmp_path / "child.yaml") == {"a": {"x": 1, "y": 20}, "b": 3}


def test_base_chain_loop_is_an_error(tmp_path):
    (tmp_path / "x.yaml").write_text("_base_: y.yaml\n")
    (tmp_path / "y.yaml").write_text("_base_: x.yaml\n")
    with pytest.raises(TDFusionError, match="loops"):
        load_config(tmp_path / "x.yaml")


def test_overrides_parse_yaml_values():
    schema = load_config(None)
    cfg = apply_overrides(schema, ["train.epochs=3", "data.task_size=[120, 160]", "task.weights=null",
                                   "task.variant=b1", "dataset.options.length=7"], schema)
    assert cfg["train"]["epochs"] == 3 and cfg["data"]["task_size"] == [120, 160]
    assert cfg["task"]["weights"] is None and cfg["task"]["variant"] == "b1"
    assert cfg["dataset"]["options"]["length"] == 7
    assert schema["train"]["epochs"] != 3  # the input is not mutated


@pytest.mark.parametrize("override, suggestion", [("train.epoch=3", "train.epochs"),
                                                  ("optim.lr_fusoin=1", "optim.lr_fusion"),
                                                  ("meta.lossgen_updte=adam", "meta.lossgen_update")])
def test_unknown_override_suggests_the_closest_key(override, suggestion):
    schema = load_config(None)
    with pytest.raises(TDFusionError, match=f"did you mean '{suggestion}'"):
        apply_overrides(schema, [override], schema)


def test_unknown_key_in_a_file_is_reported(tmp_path):
    (tmp_path / "bad.yaml").write_text("_base_: %s\ntrain: {epocs: 2}\n" % (CONFIG_DIR / "base.yaml"))
    with pytest.raises(TDFusionError, match="train.epocs.*train.epochs"):
        validate(load_config(tmp_path / "bad.yaml"), load_config(None))


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(TDFusionError, match=r"bad\.yaml: malformed YAML \(line"):
        load_config(bad)


def test_override_without_equals_sign():
    with pytest.raises(TDFusionError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])


def test_recipes_resolve_by_dataset_and_task():
    assert find_recipe("synthetic", "recon").name == "synthetic_recon.yaml"
    assert find_recipe("MIF", None).name == "refusion_mif.yaml"
    assert find_recipe("nonexistent", "seg") is None


def test_a_saved_config_with_a_renamed_key_resumes_under_the_new_name():
    """Run configs saved before meta.g_update became meta.lossgen_update keep their rule."""
    from tdfusion.config import resolve, with_new_keys

    schema = load_config(None)
    old = load_config(None)
    old["meta"]["g_update"] = old["meta"].pop("lossgen_update")
    old["meta"]["g_update"] = "maxnorm_sgd"
    del old["meta"]["objective"], old["loss"]["gradient_target"]  # keys added since
    cfg = with_new_keys(old, schema)
    validate(cfg, schema)
    assert cfg["meta"]["lossgen_update"] == "maxnorm_sgd" and "g_update" not in cfg["meta"]
    assert cfg["meta"]["objective"] == "one_step" and cfg["loss"]["gradient_target"] == "max"
    assert resolve(saved=old)["meta"]["lossgen_update"] == "maxnorm_sgd"
    assert "g_update" in old["meta"]  # the saved config itself is not changed
