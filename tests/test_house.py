"""The house (issue 14): one registry type, target kinds as plug-ins, third-party tasks
through entry points or the ``imports:`` config key, ``tdfusion.tasks`` as the installed
name of the ``tasks/`` folder, commands that do not import each other."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tdfusion.cli import main
from tdfusion.data import build_dataset
from tdfusion.data.targets import TARGET_KINDS
from tdfusion.data.views import collate, swap_sources, train_view
from tdfusion.errors import TDFusionError
from tdfusion.nets import create_model
from tdfusion.registry import Registry, UnknownName
from tdfusion.tasks import create_task

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
pytestmark = pytest.mark.usefixtures("one_thread")


# -- one registry ----------------------------------------------------------------------

def test_registry_refuses_a_second_object_under_a_name_and_ignores_case():
    reg = Registry("widget")

    @reg.register("Spanner")
    def spanner():
        return 1

    assert reg.get("SPANNER") is spanner and reg.names() == ["spanner"]
    with pytest.raises(ValueError, match="widget 'spanner' is registered twice"):
        reg.add("spanner", lambda: 2)
    reg.add("spanner", spanner)  # the same object again (a module imported twice) is fine
    reg.add("spade", lambda: 3)
    assert reg.names("sp*") == ["spade", "spanner"] and reg.names("spad*") == ["spade"]


@pytest.mark.parametrize("lookup, message", [
    (lambda: create_model("fusoin"), "unknown model 'fusoin'; did you mean 'fusion'?"),
    (lambda: build_dataset("synthetc"), "unknown dataset 'synthetc'; did you mean 'synthetic'?"),
    (lambda: create_task("sge"), "unknown task 'sge'; did you mean 'seg'?"),
    (lambda: TARGET_KINDS.get("maks"), "unknown target kind 'maks'; did you mean 'mask'?"),
])
def test_every_registry_answers_an_unknown_name_alike(lookup, message):
    with pytest.raises(UnknownName) as err:
        lookup()
    assert str(err.value).startswith(message)
    assert isinstance(err.value, TDFusionError) and isinstance(err.value, ValueError)


# -- target kinds ----------------------------------------------------------------------

@pytest.fixture
def contrast(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import contrast_task

    return contrast_task


def _is_window(image: np.ndarray, crop: np.ndarray) -> bool:
    """Whether ``crop`` is a window of ``image`` as it is (not mirrored)."""
    h, w = crop.shape
    return any(np.array_equal(image[y:y + h, x:x + w], crop)
               for y in range(image.shape[0] - h + 1) for x in range(image.shape[1] - w + 1))


def test_a_dense_target_follows_crops_flips_resizes_and_swaps(contrast):
    """The contrast map is a function of the sources, so after any crop or flip it must
    equal the map recomputed from the cropped, flipped sources (away from the crop's
    border, where the window reaches outside)."""
    ds = build_dataset("contrast_scenes", None, "train", length=2, size=(64, 80))
    sample = ds[0]
    flipped = 0
    for seed in range(8):
        view = train_view(sample, np.random.default_rng(seed), crop_size=40, task_size=None, hflip=True)
        a, b = view["a"][0].numpy(), view["b"][0].numpy()
        flipped += not _is_window(sample.a, a)  # then it is a window of the mirrored image
        expected = contrast.local_contrast(a, b)
        assert view["contrast"].dtype == torch.float32 and view["contrast"].shape == (40, 40)
        np.testing.assert_allclose(view["contrast"].numpy()[3:-3, 3:-3], expected[3:-3, 3:-3], atol=1e-5)
    assert 0 < flipped < 8  # both branches ran
    resized = train_view(sample, np.random.default_rng(0), crop_size=40, task_size=(32, 40), hflip=False)
    assert resized["contrast"].shape == (32, 40)
    # halving 64x80 averages 2x2 blocks, as for the images (not a nearest-neighbour pick)
    blocks = sample.target["contrast"].reshape(32, 2, 40, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resized["contrast"].numpy(), blocks, atol=1e-5)
    np.testing.assert_allclose(resized["a"][0].numpy(), sample.a.reshape(32, 2, 40, 2).mean(axis=(1, 3)), atol=1e-5)
    other = train_view(ds[1], np.random.default_rng(1), crop_size=40, task_size=None, hflip=True)
    batch = swap_sources(collate([view, other]))
    assert batch["contrast"].shape == (4, 40, 40)
    assert torch.equal(batch["contrast"][2:], batch["contrast"][:2])


def test_a_task_with_its_own_target_kind_trains_from_one_file_and_one_recipe(contrast, tmp_path):
    """examples/contrast_task.py (task, dataset, target kind) + examples/contrast_task.yaml,
    which imports it through the ``imports:`` key: nothing else in the repository knows it."""
    out = tmp_path / "run"
    assert main(["train", "--config", str(EXAMPLES / "contrast_task.yaml"), "--out", str(out),
                 "train.device=cpu", "run.samples=0"]) == 0
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == 4 and all(np.isfinite(r["loss_t_outer"]) for r in logs if "loss_t_outer" in r)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["eval"]["mae"] < 1


def test_an_imports_key_that_cannot_be_imported_is_one_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f"_base_: {REPO / 'configs' / 'base.yaml'}\nimports: [no_such_plugin_module]\n")
    tiny = ["train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "dataset.options.length=2",
            "dataset.options.size=[32,32]", "data.crop_size=32", "run.samples=0", "run.eval_every=0",
            "train.device=cpu"]  # if the import were skipped, the run would be short
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), *tiny]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot import 'no_such_plugin_module'" in err[0]


# -- third-party plug-ins through entry points ------------------------------------------

def test_a_task_registers_through_an_entry_point(tmp_path):
    """A tiny installed distribution (its dist-info on the path) whose entry point in group
    ``tdfusion.tasks`` names a module: ``create_task`` finds the task without an import."""
    (tmp_path / "plugpkg").mkdir()
    (tmp_path / "plugpkg" / "__init__.py").write_text(textwrap.dedent("""
        from torch import nn
        from tdfusion.tasks import TaskHead, register_task

        @register_task
        class Plugged(TaskHead):
            name = "plugged"
            def build_network(self):
                return nn.Identity()
    """))
    info = tmp_path / "plugpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tdfusion.tasks]\nplugged = plugpkg\n")
    code = ("import sys; from tdfusion.tasks import available_tasks, create_task; "
            "t = create_task('plugged'); print(type(t).__module__, 'plugpkg' in sys.modules, available_tasks())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["plugpkg", "True"] and "plugged" in proc.stdout


# -- packaging ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a copy of what the package is made of (setuptools writes build/ and
    *.egg-info/ beside the sources; the checkout stays clean)."""
    import shutil

    dest, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in ("tdfusion", "tasks", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dest), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed: {proc.stderr[-2000:]}")
    return next(dest.glob("tdfusion-*.whl"))


def test_the_wheel_holds_tdfusion_tasks_and_the_configs_and_no_top_level_tasks(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "tdfusion").rglob("__init__.py")}
    assert not [p for p in packages if f"{p}/__init__.py" not in names]  # every subpackage is shipped
    assert "tdfusion/tasks/__init__.py" in names and "tdfusion/tasks/seg.py" in names
    assert "tdfusion/configs/base.yaml" in names and "tdfusion/configs/presets/official.yaml" in names
    assert not [n for n in names if n.startswith("tasks/")]


def test_installed_outside_the_checkout_tdfusion_tasks_imports_and_tasks_does_not(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = textwrap.dedent("""
        import importlib.util, sys
        sys.path = [p for p in sys.path if p not in ("", ".")]
        import tdfusion, tdfusion.tasks, tdfusion.config, tdfusion.training.trainer, tdfusion.meta.objectives
        from tdfusion.tasks import create_task
        print(tdfusion.__file__)
        print(tdfusion.tasks.__file__)
        print(tdfusion.config.CONFIG_DIR)
        print(importlib.util.find_spec("tasks") is None, create_task("recon").name)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith(str(site)) for line in lines[:3]), lines
    assert lines[3] == "True recon"


# -- commands --------------------------------------------------------------------------

def test_commands_do_not_import_each_other():
    commands = REPO / "tdfusion" / "commands"
    names = {p.stem for p in commands.glob("*.py")} - {"__init__", "common"}
    offenders = []
    for path in commands.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = [node.module] if node.module else [a.name for a in node.names]
                offenders += [f"{path.name} imports {m}" for m in imported if m in names]
    assert not offenders


# -- the method's core ------------------------------------------------------------------

def test_the_method_core_imports_no_trainer_task_dataset_or_command():
    """tdfusion/meta may import torch, itself, ops and errors: nothing that runs, stores or
    feeds a training."""
    allowed = ("tdfusion.meta", "tdfusion.ops", "tdfusion.errors")
    offenders = []
    for path in sorted((REPO / "tdfusion" / "meta").glob("*.py")):
        package = "tdfusion.meta"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    targets = [f"{base}.{node.module}" if node.module else f"{base}.{a.name}" for a in node.names]
                else:
                    targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for name in targets:
                local = name.startswith("tdfusion") or name.split(".")[0] == "tasks"
                if local and not name.startswith(allowed):
                    offenders.append(f"{path.name}: {name}")
    assert not offenders
    assert {p.stem for p in (REPO / "tdfusion" / "meta").glob("*.py")} >= {"objectives", "jvp", "losses", "updates"}


def test_the_trainer_leaves_dataset_given_task_settings_to_the_task():
    """Classes and the void label reach the task through ``TaskHead.for_dataset``."""
    for path in (REPO / "tdfusion" / "training").glob("*.py"):
        source = path.read_text()
        assert not [key for key in ("num_classes", "class_names", "ignore_index") if key in source], path.name

    from tdfusion.tasks import get_task

    ds = build_dataset("synthetic", None, "train", length=2, size=(32, 32), target="mask")
    seg = get_task("seg").for_dataset({}, ds)
    assert seg.config["num_classes"] == len(ds.classes) and seg.config["class_names"] == list(ds.classes)


def test_bench_builds_the_modules_as_the_trainer_does(monkeypatch):
    """``tdfusion bench`` times what training runs: its networks come from the trainer's
    ``build_modules``."""
    from tdfusion.bench.meta import meta_setup
    from tdfusion.training import modules as train

    calls = []
    original = train.build_modules

    def spy(*args, **kwargs):
        calls.append(args[0]["task"]["name"])
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "build_modules", spy)
    args, cfg, _ = meta_setup("recon", torch.device("cpu"))
    assert calls == ["recon"]


# -- trainer, validator, callbacks; one evaluation loop ----------------------------------
def _tiny_config(*extra: str) -> dict:
    from tdfusion.cli import build_parser
    from tdfusion.commands.train import resolve_config

    argv = ["train", "--task", "recon", "--dataset", "synthetic", "fusion.dim=4", "fusion.num_blocks=1",
            "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1", "lossgen.heads=2", "task.dim=4",
            "task.num_blocks=1", "task.heads=2", "data.crop_size=32", "dataset.options.size=[48,48]",
            "dataset.options.length=6", "train.meta_steps=1", "train.fusion_steps=2", "train.epochs=2",
            "run.eval_limit=2", "train.device=cpu", *extra]
    return resolve_config(build_parser().parse_args(argv))[0]


def test_callbacks_see_the_fit_every_checkpoint_write_and_each_epoch_with_its_metrics(tmp_path):
    from tdfusion.training.callbacks import Callback
    from tdfusion.training.trainer import train

    events = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            events.append(("start", trainer.pos.global_step))

        def on_checkpoint_write(self, trainer, ckpt, path):
            events.append(("write", path.name, ckpt["step"]))

        def on_epoch_end(self, trainer, epoch, metrics):
            events.append(("epoch", epoch, sorted(metrics) if metrics else None))

        def on_fit_end(self, trainer, summary):
            events.append(("end", summary["global_steps"]))

    run = tmp_path / "run"
    train(_tiny_config("run.save_every=2", "run.samples=1"), run, callbacks=[Recorder()])
    writes = [e[1:] for e in events if e[0] == "write"]
    # Step checkpoints at global steps 2, 4 and 6 (last.pt; step_* are hard links), then
    # epoch_<e>.pt and last.pt at the end of each 3-step epoch.
    assert writes == [("last.pt", 2), ("epoch_001.pt", 3), ("last.pt", 3), ("last.pt", 4), ("last.pt", 6),
                      ("epoch_002.pt", 6), ("last.pt", 6)]
    epochs = [e for e in events if e[0] == "epoch"]
    assert [e[1] for e in epochs] == [1, 2] and all("loss" in e[2] for e in epochs)
    assert events[0] == ("start", 0) and events[-1] == ("end", 6)
    # The default callback (samples and report) ran beside the added one.
    assert (run / "samples" / "epoch_002.png").exists() and (run / "report" / "index.html").exists()


def test_the_training_diagnostic_and_tdfusion_eval_score_a_checkpoint_alike(tmp_path):
    """Both run the one evaluation loop: the trainer's validator on its fusion network and
    ``tdfusion eval``'s scoring of that network as a source give the same metrics."""
    from tdfusion.evaluation.sources import evaluate_source, fusion_source
    from tdfusion.training.trainer import MetaTrainer

    trainer = MetaTrainer(_tiny_config("run.samples=0"), tmp_path / "run")
    trainer.fit()
    diagnostic = trainer.evaluate()
    size = trainer.cfg["data"]["task_size"]
    scored = evaluate_source(trainer.task, trainer.task_net, fusion_source("F", trainer.fusion), trainer.test_set,
                             size, trainer.device, limit=trainer.cfg["run"]["eval_limit"])
    assert diagnostic.keys() == scored.keys() and diagnostic["loss"] == pytest.approx(scored["loss"], rel=1e-6)
    assert diagnostic["loss"] > 0


def test_only_the_evaluation_loop_drives_a_task_evaluator():
    """Validator, ``eval`` and ``compare`` share :func:`tdfusion.evaluation.loop.evaluate_views`:
    no other module of the package creates a task evaluator."""
    callers = []
    for path in (REPO / "tdfusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "evaluator":
                callers.append(str(path.relative_to(REPO)))
    assert callers == ["tdfusion/evaluation/loop.py"]


def test_no_module_of_the_package_or_its_tasks_is_over_400_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
               for folder in ("tdfusion", "tasks") for p in (REPO / folder).rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > 400} == {}
