"""YAML run configs: inheritance, command-line overrides, validation, recipe lookup.

* A config file may name a parent with ``_base_: other.yaml`` (relative to itself);
  values merge recursively, the child winning. Every chain ends at ``configs/base.yaml``,
  which lists every key with its default: a key that is not there is an error (with the
  closest valid key suggested). Two sections are open: ``task`` (validated by the task
  head's own defaults) and ``dataset.options`` (passed to the dataset builder).
* Overrides are ``dotted.key=value`` strings; values are parsed as YAML
  (``epochs=3``, ``data.task_size=[240,320]``, ``task.weights=null``).
* A recipe is a config file with ``recipe: {dataset: NAME, task: NAME}``;
  :func:`find_recipe` maps ``--dataset``/``--task`` to it.
* :func:`resolve` is what every command calls: a run config from a file, a saved run
  config or a recipe, then a preset, the command-line flags and the overrides; validated,
  and the modules under its ``imports:`` key imported (third-party tasks and datasets).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import TDFusionError

__all__ = ["CONFIG_DIR", "FLAG_KEYS", "apply_overrides", "apply_preset", "find_recipe", "load_config", "recipe_names", "merge",
           "preset_names", "resolve", "set_key", "validate", "with_new_keys"]

#: Where the shipped configs live: the checkout's ``configs/``, installed as ``tdfusion/configs``.
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = Path(os.environ.get("TDFUSION_CONFIGS") or
                  (_HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"))
_OPEN_SECTIONS = ("task", "dataset.options", "recipe")


def merge(base: dict, child: dict) -> dict:
    """Recursive merge of two configs, ``child`` winning (a new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise TDFusionError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TDFusionError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TDFusionError(f"{path}: a config must be a mapping of keys to values")
    return data


def load_config(path: str | os.PathLike | None = None, _seen: tuple = ()) -> dict:
    """Load a config file with its ``_base_`` chain (``None``: the base config)."""
    path = Path(path) if path is not None else CONFIG_DIR / "base.yaml"
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    path = path.resolve()
    if path in _seen:
        raise TDFusionError(f"{path}: _base_ chain loops")
    data = _read_yaml(path)
    parent = data.pop("_base_", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise TDFusionError(f"{path}: _base_ must name a config file, got {parent!r}")
    return merge(load_config(path.parent / parent, _seen + (path,)), data)


def _flat_keys(d: dict, prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        yield key
        if isinstance(v, dict) and key not in _OPEN_SECTIONS:
            yield from _flat_keys(v, key + ".")


def _unknown(key: str, schema: dict) -> TDFusionError:
    valid = list(_flat_keys(schema))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return TDFusionError(f"unknown config key {key!r}{hint}")


def validate(cfg: dict, schema: dict, prefix: str = "") -> None:
    """Every key of ``cfg`` must exist in ``schema`` (outside the open sections), and a key
    whose default is a number or a boolean must hold one.

    YAML reads ``1e-4`` (no dot) as text; such values of numeric keys are converted in place.
    """
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if key in _OPEN_SECTIONS:
            continue
        if k not in schema:
            raise _unknown(key, _schema_root(schema, prefix))
        if isinstance(v, dict) and isinstance(schema[k], dict):
            validate(v, schema[k], key + ".")
        elif isinstance(schema[k], bool):
            if not isinstance(v, bool):
                raise TDFusionError(f"config key {key!r}: expected true or false, got {v!r}")
        elif isinstance(schema[k], (int, float)):
            cfg[k] = _number(key, v, schema[k])


def _number(key: str, value: Any, default: int | float) -> int | float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TDFusionError(f"config key {key!r}: expected a finite number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TDFusionError(f"config key {key!r}: expected a finite number, got {value!r}")
    if isinstance(default, int):
        if value != int(value):
            raise TDFusionError(f"config key {key!r}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _schema_root(schema: dict, prefix: str) -> dict:
    # Suggestions search the whole key space; rebuild it from the prefix.
    root = schema
    for part in [p for p in prefix.split(".") if p][::-1]:
        root = {part: root}
    return root


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise TDFusionError(f"config key {dotted!r}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(cfg: dict, overrides: Iterable[str], schema: dict | None = None) -> dict:
    """Apply ``key=value`` strings; with ``schema``, unknown keys are errors."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise TDFusionError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise TDFusionError(f"override {item!r}: value is not valid YAML") from None
        if schema is not None and not any(key == s or key.startswith(s + ".") for s in _OPEN_SECTIONS):
            node = schema
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise _unknown(key, schema)
                node = node[part]
        set_key(cfg, key, value)
    return cfg


def find_recipe(dataset: str, task: str | None) -> Path | None:
    """The shipped config whose ``recipe`` names this dataset (and task, when given)."""
    matches = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        recipe = _read_yaml(path).get("recipe") or {}
        if str(recipe.get("dataset", "")).lower() != dataset.lower():
            continue
        if task is None or str(recipe.get("task", "")).lower() == task.lower():
            matches.append(path)
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise TDFusionError(f"dataset {dataset!r} has several recipes ({names}); pass --task or --config")
    return matches[0] if matches else None


def recipe_names() -> list[str]:
    """``DATASET/TASK`` of every shipped recipe (``--dataset DATASET --task TASK``)."""
    names = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        recipe = _read_yaml(path).get("recipe") or {}
        if recipe.get("dataset"):
            names.append(f"{recipe['dataset']}/{recipe.get('task', '?')}")
    return names


#: Command-line flags that set a config key (``--epochs 3`` is ``train.epochs=3``).
FLAG_KEYS = {"task": "task.name", "data_root": "dataset.root", "out": "run.out", "device": "train.device",
             "epochs": "train.epochs", "task_weights": "task.weights", "trust_weights": "task.trust_weights",
             "deterministic": "train.deterministic"}


def resolve(config: str | os.PathLike | None = None, *, dataset: str | None = None, saved: dict | None = None,
            preset: str | None = None, overrides: Iterable[str] = (), **flags: Any) -> dict:
    """The run config, validated, its ``imports:`` imported.

    Its start: the ``config`` file, else ``saved`` (a run config saved in a checkpoint,
    completed with the keys added since at their defaults; ``dataset`` then renames its
    dataset), else the recipe of ``dataset`` (and ``flags["task"]``), else the base config
    naming ``dataset``, else the base config. Then the ``preset`` (new runs only), the
    ``flags`` (:data:`FLAG_KEYS`; ``None`` leaves a key alone) and the ``key=value``
    ``overrides``.
    """
    from .registry import import_plugins

    unknown = set(flags) - set(FLAG_KEYS)
    if unknown:
        raise TypeError(f"resolve() got unknown flags: {', '.join(sorted(unknown))}")
    schema = load_config(None)
    task = flags.get("task")
    if config:
        cfg = load_config(config)
        try:
            validate(cfg, schema)
        except TDFusionError as exc:  # name the file; errors of the overrides below name the override
            raise TDFusionError(f"{config}: {exc}") from None
    elif saved is not None:
        cfg = with_new_keys(saved, schema)
        if dataset:
            set_key(cfg, "dataset.name", dataset)
    elif dataset:
        recipe = find_recipe(dataset, task)
        if recipe:
            cfg = load_config(recipe)
        else:
            cfg = copy.deepcopy(schema)
            set_key(cfg, "dataset.name", dataset)
    else:
        cfg = copy.deepcopy(schema)
    if preset:
        if saved is not None and not config:
            raise TDFusionError("--preset applies to a new run; a resumed run keeps its own config")
        cfg = apply_preset(cfg, preset, schema)
    for flag, key in FLAG_KEYS.items():
        if flags.get(flag) is not None:
            set_key(cfg, key, flags[flag])
    overrides = list(overrides)
    cfg = apply_overrides(cfg, overrides, schema)
    validate(cfg, schema)
    # A saved run config is checked only when this call sets the key again: an earlier
    # version let it through, and eval of that run should not stop on it.
    if saved is None or config or flags.get("trust_weights") is not None or any(
            str(o).split("=", 1)[0].strip() == "task.trust_weights" for o in overrides):
        _check_trust_weights(cfg)
    import_plugins(cfg.get("imports"), source=f"{config or 'config'}: imports")
    return cfg


def _check_trust_weights(cfg: dict) -> None:
    """``task.trust_weights`` (``--trust-weights``) without a task weights file does nothing:
    refused, not ignored."""
    task = cfg.get("task") or {}
    if task.get("trust_weights") and not task.get("weights"):
        raise TDFusionError("--trust-weights (task.trust_weights: true) does nothing without a task weights file: "
                            "it lets --task-weights (task.weights) of the det, seg and recon tasks be unpickled")


#: Keys renamed since a run config could be saved: old dotted key -> new one.
RENAMED_KEYS = {"meta.g_update": "meta.lossgen_update"}


def with_new_keys(saved: dict, schema: dict) -> dict:
    """A run config saved by an earlier version, with renamed keys under their new names
    (:data:`RENAMED_KEYS`) and the keys added since at their defaults (their defaults keep
    the earlier behaviour)."""
    saved = copy.deepcopy(saved)
    for old, new in RENAMED_KEYS.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        if isinstance(saved.get(section), dict) and name in saved[section]:
            saved.setdefault(new_section, {})[new_name] = saved[section].pop(name)
    return merge(schema, saved)


def preset_names() -> list[str]:
    """The presets shipped in ``configs/presets/``."""
    return sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))


def apply_preset(cfg: dict, name: str, schema: dict) -> dict:
    """``cfg`` with ``configs/presets/<name>.yaml`` merged over it (the preset wins)."""
    path = CONFIG_DIR / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise TDFusionError(f"unknown preset {name!r}; available: {', '.join(preset_names()) or 'none'}")
    overlay = load_config(path)
    try:
        validate(overlay, schema)
    except TDFusionError as exc:
        raise TDFusionError(f"{path}: {exc}") from None
    return merge(cfg, overlay)
