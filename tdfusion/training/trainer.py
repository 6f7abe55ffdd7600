"""Training runs: Algorithm 1 driven epoch by epoch, with checkpoints, logs and resume.

A run folder holds::

    config.yaml          the resolved config (after inheritance and overrides)
    last.pt              latest checkpoint (F, G, T, optimisers, position) -> tdfusion fuse accepts it
    best.pt              the checkpoint of the epoch with the best task fitness on the test split
    step_<k>.pt          rolling step checkpoints (run.keep most recent; hard links to the
                         last.pt written at that step, so no checkpoint is stored twice)
    epoch_<e>.pt         weights at the end of each epoch (no optimiser state)
    train_log.jsonl      one JSON object per step (phase, losses, learning rates)
    train_log.csv, eval_log.csv, tensorboard/   the same, as run.loggers asks (tdfusion.training.runlog)
    eval_log.jsonl       task metrics on the test split, per evaluated epoch
    samples/epoch_<e>.png  sources, fused image and G's weight maps for a few pairs
    summary.json         final losses and metrics

Every random choice (meta-train/meta-test split, batch order, crops, flips) is a pure
function of ``(seed, epoch, phase, step)``, and checkpoints store the position and the
torch RNG state, so ``--resume`` continues exactly where the run stopped.

Under ``torchrun`` (see :mod:`tdfusion.training.distributed` and ``docs/distributed.md``) every
process draws the same global batch of ``batch_size * world_size`` samples and keeps its
own slice; gradients (and the meta phase's inner-step gradients) are averaged across
processes, logged values are averaged, and only rank 0 writes files or prints.

Faults (``docs/robustness.md``): checkpoints are written atomically; SIGINT/SIGTERM make
every process finish its step, save ``last.pt`` and exit; a non-finite loss stops the
run naming the step and the batch, leaving the last good checkpoint in place.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import load_checkpoint, module_record, save_checkpoint
from ..data import build_dataset, collate, eval_view, swap_sources, to_device, train_view
from ..data.base import PairDataset
from ..device import resolve_device
from ..errors import TDFusionError
from ..io import atomic_write
from ..meta import objectives
from ..meta.jvp import meta_gradient_jvp
from ..meta.losses import FUSION_LOSSES
from ..meta.updates import G_UPDATE_RULES, apply_meta_gradient, make_optimizer, make_scheduler
from ..nets import create_model
from ..precision import PRECISIONS, autocast, check_precision, grad_scaler
from ..progress import progress_bar
from ..results import jsonable
from . import distributed, run_folder
from .runlog import LOGGERS, RunLoggers

__all__ = ["MetaTrainer", "Modules", "build_modules", "build_task", "check_values", "evaluate_task",
           "set_determinism", "train"]

_PHASES = ("meta", "fusion")


def _seed_of(*key: int) -> int:
    return int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1)[0])


class _Views(Dataset):
    """Indexes are ``(sample index, seed)``; the seed drives that sample's crop and flip."""

    def __init__(self, base: PairDataset, crop_size: int, task_size, hflip: bool):
        self.base, self.crop_size, self.task_size, self.hflip = base, crop_size, task_size, hflip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        rng = np.random.default_rng(seed)
        return train_view(self.base[index], rng, self.crop_size, self.task_size, self.hflip)


@dataclass
class Modules:
    """What a run config builds before training: the task head, the fusion-loss settings,
    and the networks F (fusion), G (loss generator) and T (task network)."""

    task: Any
    settings: objectives.LossSettings
    fusion: torch.nn.Module
    lossgen: torch.nn.Module
    task_net: torch.nn.Module


def build_modules(cfg: dict, dataset: PairDataset | None, device: torch.device | str) -> Modules:
    """The modules of a run config on ``device``, the task configured for ``dataset``; the
    trainer and ``tdfusion bench`` build them alike. Networks are created in the order F,
    G, T (the order fixes what a seed gives each)."""
    task = build_task(cfg["task"], dataset)
    if dataset is not None and task.target_kind != "none" and dataset.target_kind != task.target_kind:
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r} provides {dataset.target_kind!r} targets "
                            f"but task {task.name!r} needs {task.target_kind!r}")
    lc = cfg["loss"]
    if lc["form"] not in FUSION_LOSSES:
        raise TDFusionError(f"loss.form {lc['form']!r}: expected one of {', '.join(FUSION_LOSSES)}")
    settings = objectives.LossSettings(lc["form"], float(lc["alpha"]), lc["intensity"], bool(lc["fixed_weights"]))
    fusion = _build_net(cfg["fusion"], device)
    lossgen = _build_net({**cfg["lossgen"], "pairs": FUSION_LOSSES[lc["form"]][1]}, device)
    try:
        task_net = task.build_network().to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TDFusionError(f"task {task.name!r}: cannot build its network ({exc})") from None
    return Modules(task, settings, fusion, lossgen, task_net)


def _build_net(net_cfg: dict, device: torch.device | str) -> torch.nn.Module:
    net_cfg = dict(net_cfg)
    arch = net_cfg.pop("arch")
    try:
        return create_model(arch, **net_cfg).to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TDFusionError(f"cannot build {arch!r}: {exc}") from None


def build_task(task_cfg: dict, dataset: PairDataset | None = None):
    """The task head of a run config's ``task`` section, configured for ``dataset``
    (:meth:`TaskHead.for_dataset`); a bad name or option is a :class:`TDFusionError`."""
    from tdfusion.tasks import get_task

    cfg = dict(task_cfg)
    name = cfg.pop("name")
    try:
        cls = get_task(name)
    except ValueError as exc:
        raise TDFusionError(str(exc)) from None
    try:
        return cls.for_dataset(cfg, dataset)
    except ValueError as exc:
        raise TDFusionError(f"task {name!r}: {exc}") from None


@torch.no_grad()
def evaluate_task(task, task_net, images: Iterator[tuple[torch.Tensor, dict]]) -> dict[str, Any]:
    """Run the task's evaluator over ``(fused (B,1,H,W), batch)`` pairs."""
    evaluator = task.evaluator()
    was_training = task_net.training
    task_net.eval()
    for fused, batch in images:
        evaluator.update(task.predict(task_net, fused), batch)
    task_net.train(was_training)
    return evaluator.compute()


@dataclass
class Position:
    epoch: int = 0
    phase: str = "meta"
    step: int = 0          # steps done in the current phase
    global_step: int = 0

    def as_dict(self) -> dict:
        return dict(epoch=self.epoch, phase=self.phase, step=self.step, global_step=self.global_step)


class MetaTrainer:
    """Owns the networks, optimisers and data of one run; :meth:`fit` runs it."""

    def __init__(self, cfg: dict, run_dir: str | Path, resume_from: str | Path | None = None):
        check_values(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        tc, dc = cfg["train"], cfg["data"]
        self.world = distributed.world_size()
        self.is_main = distributed.is_main()
        self.device = resolve_device(tc["device"])
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK (distributed.setup)
        set_determinism(bool(tc["deterministic"]), self.device)
        check_precision(tc["precision"], self.device)
        self.precision, self.scaler = tc["precision"], grad_scaler(tc["precision"], self.device)
        torch.manual_seed(tc["seed"])
        # Third-party code (ultralytics' loss, transformers) may draw from these.
        random.seed(tc["seed"])
        np.random.seed(tc["seed"] % 2**32)

        ds_cfg = cfg["dataset"]
        options = dict(ds_cfg.get("options") or {})
        try:
            self.train_set = build_dataset(ds_cfg["name"], ds_cfg["root"], ds_cfg["train_split"],
                                           cache=bool(dc["cache"]), **options)
        except TypeError as exc:
            raise TDFusionError(f"dataset {ds_cfg['name']!r}: bad option ({exc})") from None
        if len(self.train_set) == 0:
            raise TDFusionError(f"dataset {ds_cfg['name']!r} ({ds_cfg['root']}): the {ds_cfg['train_split']} split is empty")
        self.test_set = self._optional_split(ds_cfg, options)

        modules = build_modules(cfg, self.train_set, self.device)
        self.task, self.settings = modules.task, modules.settings
        self.fusion, self.lossgen, self.task_net = modules.fusion, modules.lossgen, modules.task_net

        oc = cfg["optim"]
        self.opt_f = make_optimizer(self.fusion.parameters(), oc["lr_fusion"])
        self.opt_t = make_optimizer(self.task_net.parameters(), oc["lr_task"])
        self.opt_g = make_optimizer(self.lossgen.parameters(), oc["lr_lossgen"], cfg["meta"]["g_update"])
        epochs = tc["epochs"]
        self.schedulers = [make_scheduler(o, oc["schedule"], epochs, oc["step_size"], oc["gamma"])
                           for o in (self.opt_f, self.opt_t, self.opt_g)]
        self.views = _Views(self.train_set, dc["crop_size"], dc["task_size"], dc["hflip"])
        self.pos = Position()
        self.meta_steps = 0 if self.settings.fixed else int(tc["meta_steps"])
        n_batches = math.ceil(len(self.train_set) / (dc["batch_size"] * self.world))
        self.fusion_steps = int(tc["fusion_steps"]) if tc["fusion_steps"] is not None else n_batches
        self._stop_requested = False
        self._stop_agreed = False
        self._saves = 0
        self.best: dict[str, Any] | None = None  # {"fitness", "epoch"} of best.pt
        self.loggers: RunLoggers | None = None
        self._resumed = resume_from is not None
        if resume_from is not None:
            self._restore(resume_from)
        # Every process starts from rank 0's weights, whatever its seed or restore did.
        for net in (self.fusion, self.lossgen, self.task_net):
            distributed.broadcast_module_(net)

    # -- construction helpers -----------------------------------------------------
    def _optional_split(self, ds_cfg: dict, options: dict) -> PairDataset | None:
        if not ds_cfg.get("test_split"):
            return None
        try:
            ds = build_dataset(ds_cfg["name"], ds_cfg["root"], ds_cfg["test_split"],
                               cache=bool(self.cfg["data"]["cache"]), **options)
        except TDFusionError:
            return None  # no test split: training still works, evaluation is skipped
        return ds if len(ds) else None

    # -- data ------------------------------------------------------------------------
    def _loader(self, keys: list[list[tuple[int, int]]]) -> DataLoader:
        dc = self.cfg["data"]
        # A private generator: creating a loader must not consume the global torch RNG,
        # or a resumed run would diverge from an uninterrupted one.
        return DataLoader(self.views, batch_sampler=keys, collate_fn=collate, num_workers=dc["num_workers"],
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def _phase_keys(self, phase: str, epoch: int, steps: int, start: int) -> list[list[tuple[int, int]]] | tuple:
        """This process's batches of ``(index, seed)`` for steps ``start..steps-1`` of a phase.

        Each step draws a global batch of ``batch_size * world_size`` keys (the same on every
        process, and the same a single process with that batch size would draw); this
        process keeps its contiguous slice.
        """
        keys = self._global_phase_keys(phase, epoch, steps, start)
        if self.world == 1:
            return keys
        if phase == "fusion":
            return [distributed.shard(batch) for batch in keys]
        return tuple([distributed.shard(batch) for batch in part] for part in keys)

    def _global_phase_keys(self, phase: str, epoch: int, steps: int, start: int):
        seed, n = self.cfg["train"]["seed"], len(self.train_set)
        bs = self.cfg["data"]["batch_size"] * self.world
        perm = np.random.default_rng([seed, epoch, _PHASES.index(phase)]).permutation(n)
        if phase == "fusion":
            return [[(int(perm[(s * bs + j) % n]), _seed_of(seed, epoch, 1, s, j)) for j in range(bs)]
                    for s in range(start, steps)]
        # Disjoint meta-train / meta-test subsets for this epoch (the papers' Sec. 3.3).
        half = max(1, n // 2)
        mtr, mts = perm[:half], (perm[half:] if n > 1 else perm)
        train = [[(int(mtr[(s * bs + j) % len(mtr)]), _seed_of(seed, epoch, 0, s, j)) for j in range(bs)]
                 for s in range(start, steps)]
        test = [[(int(mts[(s * bs + j) % len(mts)]), _seed_of(seed, epoch, 2, s, j)) for j in range(bs)]
                for s in range(start, steps)]
        return train, test

    def _prepare(self, batch: dict) -> dict:
        if self.cfg["data"]["swap_sources"]:
            batch = swap_sources(batch)
        return to_device(batch, self.device)

    # -- steps -------------------------------------------------------------------------
    def meta_step(self, train_batch: dict, test_batch: dict) -> dict[str, float]:
        mc = self.cfg["meta"]
        inner_lr = mc["inner_lr"] if mc["inner_lr"] is not None else self.opt_f.param_groups[0]["lr"]
        if mc["task_inner_step"] == "adam":
            task_lr = objectives.adam_task_step(self.opt_t)
        else:
            task_lr = mc["task_inner_lr"] if mc["task_inner_lr"] is not None else self.opt_t.param_groups[0]["lr"]
        g_params = objectives.params_of(self.lossgen)
        meta_gradient = meta_gradient_jvp if mc["gradient"] == "jvp" else objectives.meta_gradient_second_order
        grads, logs = meta_gradient(
            self.fusion, objectives.params_of(self.fusion), self.lossgen, g_params, self.task, self.task_net,
            objectives.params_of(self.task_net), train_batch, test_batch, inner_lr, task_lr, self.settings,
            reduce_grads=distributed.mean_tensors if self.world > 1 else None)
        logs["meta_grad_scale"] = apply_meta_gradient(self.opt_g, g_params, grads, mc["g_update"])
        return logs

    def fusion_step(self, batch: dict) -> dict[str, float]:
        # train.precision applies here (tdfusion.precision); the meta step stays fp32.
        with autocast(self.precision, self.device):
            out = objectives.fusion_objective(self.fusion, objectives.params_of(self.fusion), self.lossgen,
                                          objectives.params_of(self.lossgen), batch["crop_a"], batch["crop_b"],
                                          self.settings, detach_weights=True)
        self.opt_f.zero_grad(set_to_none=True)
        self._scaled(out["loss"]).backward()
        distributed.average_gradients(self.fusion.parameters())
        self._step(self.opt_f)
        with autocast(self.precision, self.device):
            loss_t = objectives.fusion_phase_task_loss(self.fusion, self.task, self.task_net, batch)
        self.opt_t.zero_grad(set_to_none=True)
        self._scaled(loss_t).backward()
        distributed.average_gradients(self.task_net.parameters())
        self._step(self.opt_t)
        if self.scaler is not None:
            self.scaler.update()
        # BatchNorm statistics: each process normalises with its own batch (as DDP does);
        # the running statistics follow rank 0's (DDP's broadcast_buffers), so every
        # process holds the same T and a checkpoint is the same whichever rank wrote it.
        distributed.broadcast_module_(self.task_net, buffers_only=True)
        return {"loss_f": float(out["loss"].detach()), "loss_int": float(out["int"].detach()),
                "loss_grad": float(out["grad"].detach()), "loss_t": float(loss_t.detach())}

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def _step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:  # unscales, and skips the step when the scaled gradients overflowed
            self.scaler.step(opt)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self, with_state: bool = True) -> dict:
        ckpt: dict[str, Any] = {
            "fusion": module_record(self.cfg["fusion"]["arch"], self.fusion),
            "lossgen": module_record(self.cfg["lossgen"]["arch"], self.lossgen),
            "task": {"name": self.task.name, "config": dict(self.task.config),
                     "state_dict": {k: v.detach().cpu() for k, v in self.task_net.state_dict().items()}},
            "epoch": self.pos.epoch, "step": self.pos.global_step,
            "extra": {"config": self.cfg},
        }
        if with_state:
            ckpt["train_state"] = {
                "position": self.pos.as_dict(),
                "optimizers": [o.state_dict() for o in (self.opt_f, self.opt_t, self.opt_g)],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "world_size": self.world,
                "best": self.best,
            }
        return ckpt

    def save(self, kind: str = "step") -> Path:
        """Write a checkpoint (rank 0 only; every process may call it)."""
        if kind == "epoch":
            path = self.run_dir / run_folder.epoch_checkpoint(self.pos.epoch)
            if self.is_main:
                self._write(self.checkpoint(with_state=False), path)
            return path
        if not self.is_main:
            return self.run_dir / run_folder.LAST
        ckpt = self.checkpoint()
        last = self.run_dir / run_folder.LAST
        self._write(ckpt, last)
        if kind == "step":
            _link_or_copy(last, self.run_dir / run_folder.step_checkpoint(self.pos.global_step))
            for old in sorted(self.run_dir.glob("step_*.pt"))[:-max(1, self.cfg["run"]["keep"])]:
                old.unlink(missing_ok=True)
        return last

    def _improves_best(self, metrics: dict[str, Any]) -> bool:
        """Record this epoch as the best when the task's fitness improved (ultralytics'
        rule: best.pt is the checkpoint with the best validation fitness)."""
        fitness = self.task.fitness(metrics)
        if fitness is None or not math.isfinite(fitness):
            return False
        if self.best is not None and fitness <= self.best["fitness"]:
            return False
        self.best = {"fitness": float(fitness), "epoch": self.pos.epoch}
        return True

    def _write(self, ckpt: dict, path: Path) -> None:
        self._saves += 1
        if _fault("kill_during_save") == self._saves:
            _die_while_writing(ckpt, path)
        save_checkpoint(ckpt, path)

    def _restore(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        state = ckpt.get("train_state")
        if state is None:
            raise TDFusionError(f"{path}: holds weights only (no training state); resume from last.pt or step_*.pt")
        for record in ("fusion", "lossgen", "task"):
            if not isinstance(ckpt.get(record), dict) or "state_dict" not in ckpt[record]:
                raise TDFusionError(f"{path}: the checkpoint has no {record} weights; it cannot be resumed")
        missing = [f for f in ("position", "optimizers", "schedulers", "torch_rng")
                   if not isinstance(state, dict) or f not in state]
        if missing:
            raise TDFusionError(f"{path}: incomplete training state (missing {', '.join(missing)})")
        task_name = ckpt["task"].get("name")
        if task_name != self.task.name:
            raise TDFusionError(f"{path}: checkpoint of task {task_name!r}, this run is {self.task.name!r}")
        try:
            self.fusion.load_state_dict(ckpt["fusion"]["state_dict"])
            self.lossgen.load_state_dict(ckpt["lossgen"]["state_dict"])
            self.task_net.load_state_dict(ckpt["task"]["state_dict"])
            for opt, sd in zip((self.opt_f, self.opt_t, self.opt_g), state["optimizers"]):
                opt.load_state_dict(sd)
            for sch, sd in zip(self.schedulers, state["schedulers"]):
                sch.load_state_dict(sd)
            torch.set_rng_state(state["torch_rng"])
            self.best = state.get("best")
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.pos = Position(**state["position"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TDFusionError(f"{path}: does not match this run's configuration ({reason})") from None
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world and self.is_main:
            print(f"note: {path} was written by a run on {saved_world} process(es), this one has {self.world}: "
                  f"the global batch changes from {self.cfg['data']['batch_size'] * saved_world} to "
                  f"{self.cfg['data']['batch_size'] * self.world} pairs")
        if self.is_main:
            self._truncate_logs()

    def _truncate_logs(self) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        for name, key in ((run_folder.TRAIN_LOG, "global_step"), (run_folder.EVAL_LOG, "epoch")):
            path = self.run_dir / name
            if not path.exists():
                continue
            limit = self.pos.global_step if key == "global_step" else self.pos.epoch
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get(key, 0) <= limit:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
            with atomic_write(path, "w") as fh:
                fh.write("".join(line + "\n" for line in kept))

    # -- logging, samples, evaluation ----------------------------------------------
    def _log(self, name: str, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / name, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.loggers is not None:
            if name == run_folder.TRAIN_LOG:
                self.loggers.train(record)
            else:
                self.loggers.eval(record, self.pos.global_step)

    @torch.no_grad()
    def sample_panels(self) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
        """``[(stem, [(label, (H, W) in [0, 1]), ...])]`` for the first ``run.samples`` training
        pairs: A, B, the fused image as ``tdfusion fuse`` writes it (min-max stretched) and
        G's weight maps for A (w_A, and v_A for the ReFusion form)."""
        from ..inference import normalize_minmax

        count = min(self.cfg["run"]["samples"], len(self.train_set))
        size = self.cfg["data"]["task_size"]
        out = []
        self.fusion.eval(), self.lossgen.eval()
        for i in range(max(0, count)):
            sample = self.train_set[i]
            view = eval_view(sample, size)
            a, b = view["a"][None].to(self.device), view["b"][None].to(self.device)
            fused = normalize_minmax(self.fusion(a, b)[0, 0].float().cpu().numpy())
            weights = objectives.loss_weights(self.lossgen, objectives.params_of(self.lossgen), a, b, self.settings)
            panels = [(label, t[0, 0].float().cpu().numpy()) for label, t in (("A", a), ("B", b))]
            panels.append(("fused", fused))
            panels += [(name, weights[0, c].float().cpu().numpy())
                       for name, c in (("w_A", 0), ("v_A", 2)) if c < weights.shape[1]]
            out.append((sample.stem, panels))
        self.fusion.train(), self.lossgen.train()
        return out

    def render_samples(self, epoch: int) -> None:
        """``samples/epoch_<e>.png`` (one labelled row per pair: A | B | fused | w_A (| v_A),
        the maps in the report's colour map, with its colour bar) and ``report/``: the same
        pairs as a ``tdfusion report`` page with their fusion metrics, the task metrics of the
        epoch and the run's provenance."""
        from ..io import write_image
        from ..report import is_weight_map, sample_sheet

        samples = self.sample_panels()
        if not samples:
            return
        sheet = sample_sheet(samples)
        write_image(self.run_dir / run_folder.SAMPLES / run_folder.epoch_sheet(epoch), sheet)
        if self.loggers is not None:
            self.loggers.image("samples", sheet, self.pos.global_step)
            self.loggers.flush()
        self._write_report(samples, epoch, is_weight_map)

    def _write_report(self, samples, epoch: int, is_weight_map) -> None:
        from ..metrics import evaluate as fusion_metrics
        from ..metrics.evaluate import mean_metrics
        from ..report import ReportEntry, provenance, write_report

        entries, per_image = [], {}
        for stem, panels in samples:
            imgs = {label: x for label, x in panels}
            try:
                values = fusion_metrics(*(np.clip(imgs[k], 0, 1).astype(np.float64) * 255 for k in ("fused", "A", "B")))
            except (TDFusionError, ValueError):  # e.g. smaller than VIF's minimum size: show the images anyway
                values = {}
            if values:
                per_image[stem] = values
            entries.append(ReportEntry(stem, panels, {"fused": values} if values else {}))
        summary = {"fused": {"mean": mean_metrics(per_image), "per_image": per_image}} if per_image else None
        notes = [f"epoch {epoch}/{self.cfg['train']['epochs']}, task {self.task.name}, "
                 f"dataset {self.cfg['dataset']['name']}; training pairs at the task input size",
                 "panels: sources A and B, the fused image as tdfusion fuse writes it (luminance, min-max "
                 "stretched), and the loss generator's weight for A (w_A: intensity, v_A: gradient; "
                 "1 = all weight on A)"]
        evals = self.run_dir / run_folder.EVAL_LOG
        if evals.exists():
            lines = [json.loads(x) for x in evals.read_text().splitlines() if x.strip()]
            if lines:
                scalars = {k: v for k, v in lines[-1].items() if isinstance(v, (int, float)) and k != "epoch"}
                notes.append(f"test-split task metrics (epoch {lines[-1].get('epoch')}): "
                             + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        if self.best is not None:
            notes.append(f"best.pt: epoch {self.best['epoch']} (task fitness {self.best['fitness']:.4g})")
        write_report(self.run_dir / run_folder.REPORT, entries, summary=summary,
                     title=f"training report: {self.run_dir.resolve().name}", notes=notes,
                     provenance=provenance(self.run_dir / run_folder.LAST), height=self.cfg["data"]["crop_size"]
                     if self.cfg["data"]["task_size"] is None else self.cfg["data"]["task_size"][0],
                     columns=max(len(p) for _, p in samples))

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        if self.test_set is None:
            return None
        limit = self.cfg["run"]["eval_limit"]
        n = len(self.test_set) if limit is None else min(limit, len(self.test_set))
        size = self.cfg["data"]["task_size"]
        self.fusion.eval()

        def batches():
            for i in range(n):
                batch = to_device(collate([eval_view(self.test_set[i], size)]), self.device)
                yield self.fusion(batch["a"], batch["b"]), batch

        result = evaluate_task(self.task, self.task_net, batches())
        self.fusion.train()
        return result

    # -- the loop ------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def _check_finite(self, logs: dict[str, float], stems: list[str]) -> None:
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:  # the logs are averaged, so every process takes this branch together
            stems = [s for part in distributed.gather_objects(list(stems)) for s in part]
            stems = list(dict.fromkeys(stems))  # swapped pairs repeat their stems
            last = self.run_dir / run_folder.LAST
            keep = f"; the last good checkpoint is {last}" if last.exists() else ""
            raise TDFusionError(
                f"non-finite {', '.join(bad)} at epoch {self.pos.epoch + 1}, {self.pos.phase} step "
                f"{self.pos.step + 1} (global step {self.pos.global_step + 1}), batch {', '.join(stems)}{keep}")

    def _after_step(self, logs: dict, stems: list[str]) -> dict:
        if self.world > 1:
            # One collective per step: the averaged logs and whether any process was asked to stop.
            reduced = distributed.reduce_metrics({**logs, "_stop": float(self._stop_requested)})
            self._stop_agreed = reduced.pop("_stop") > 0
            logs = reduced
        self._check_finite(logs, stems)
        self.pos.step += 1
        self.pos.global_step += 1
        record = {**self.pos.as_dict(), "epoch": self.pos.epoch + 1, **logs,
                  "lr_fusion": self.opt_f.param_groups[0]["lr"], "time": round(time.time(), 3)}
        self._log(run_folder.TRAIN_LOG, record)
        if self.pos.global_step % self.cfg["run"]["save_every"] == 0:
            self.save("step")
        return logs

    def _should_stop(self) -> bool:
        # Processes must stop after the same step: they act on the flag agreed in _after_step.
        return self._stop_requested if self.world == 1 else self._stop_agreed

    def _run_phase(self, phase: str, steps: int) -> bool:
        """Run the remaining steps of a phase; False if a stop was requested."""
        epochs = self.cfg["train"]["epochs"]
        label = f"epoch {self.pos.epoch + 1}/{epochs} {'learning G' if phase == 'meta' else 'learning F, T'}"
        keys = self._phase_keys(phase, self.pos.epoch, steps, self.pos.step)
        running: dict[str, float] = {}
        with progress_bar(steps, label, enabled=steps > 0 and self.is_main) as advance:
            advance(self.pos.step)
            if phase == "meta":
                iterator = zip(_batches(self._loader(keys[0])), _batches(self._loader(keys[1]))) if keys[0] else iter(())
            else:
                iterator = ((b, None) for b in _batches(self._loader(keys))) if keys else iter(())
            for first, second in iterator:
                if self._should_stop():
                    return False
                if phase == "meta":
                    logs = self.meta_step(self._prepare(first), self._prepare(second))
                else:
                    logs = self.fusion_step(self._prepare(first))
                logs = self._after_step(logs, first["stems"])
                for k, v in logs.items():
                    running[k] = 0.9 * running.get(k, v) + 0.1 * v
                shown = ("loss_f", "loss_t_outer") if phase == "meta" else ("loss_f", "loss_t")
                advance(1, **{k: running[k] for k in shown if k in running})
        return not self._should_stop()

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to summary.json)."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / run_folder.SAMPLES).mkdir(exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp"):  # left by a kill during a write
                stale.unlink(missing_ok=True)
            with atomic_write(self.run_dir / run_folder.CONFIG, "w") as fh:
                yaml.safe_dump(self.cfg, fh, sort_keys=False)
            self.loggers = RunLoggers(self.run_dir, self.cfg["run"]["loggers"],
                                      self.pos.global_step if self._resumed else None)
            if self._resumed:
                self.loggers.truncate(self.pos.global_step, self.pos.epoch)
        # SIGTERM too: schedulers (SLURM, Kubernetes) send it before killing a job.
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._fit()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.loggers is not None:
                self.loggers.close()

    def _fit(self) -> dict[str, Any]:
        epochs = self.cfg["train"]["epochs"]
        eval_every = self.cfg["run"]["eval_every"]
        while self.pos.epoch < epochs:
            # Warm-up epochs train F and T only: G's first meta-gradients then come from a
            # task network that has learned something, not from a random one.
            meta_steps = self.meta_steps if self.pos.epoch >= self.cfg["train"]["warmup_epochs"] else 0
            for phase, steps in (("meta", meta_steps), ("fusion", self.fusion_steps)):
                if _PHASES.index(phase) < _PHASES.index(self.pos.phase):
                    continue
                self.pos.phase = phase
                if not self._run_phase(phase, steps):
                    path = self.save("interrupt")
                    if self.is_main:
                        print(f"stopped at epoch {self.pos.epoch + 1}, {phase} step {self.pos.step}; "
                              f"resume with --resume {path}")
                    raise KeyboardInterrupt
                self.pos.step = 0
            with warnings.catch_warnings():
                # G's optimiser never steps in the fixed-weight ablation (and a resumed
                # optimiser looks fresh to the scheduler's check): the warning is spurious.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                for sch in self.schedulers:
                    sch.step()
            self.pos.epoch += 1
            self.pos.phase = "meta"
            metrics = None
            if eval_every and self.pos.epoch % eval_every == 0 and self.is_main:
                metrics = self.evaluate()
                if metrics is not None:
                    self._log(run_folder.EVAL_LOG, {"epoch": self.pos.epoch, **jsonable(metrics)})
            improved = metrics is not None and self._improves_best(metrics)
            self.save("epoch")
            self.save("last")  # records self.best, so a resumed run compares against it
            if improved and self.is_main:
                _link_or_copy(self.run_dir / run_folder.LAST, self.run_dir / run_folder.BEST)
            if self.is_main:
                # After the save: the report records the sha256 of the last.pt it shows.
                self.render_samples(self.pos.epoch)
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"run": str(self.run_dir), "epochs": self.pos.epoch,
                                   "global_steps": self.pos.global_step}
        if not self.is_main:
            return summary
        log = self.run_dir / run_folder.TRAIN_LOG
        if log.exists():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            for phase in _PHASES:
                rows = [r for r in records if r["phase"] == phase and r["epoch"] == self.pos.epoch]
                if rows:
                    keys = [k for k in rows[0] if k.startswith("loss")]
                    summary[f"last_epoch_{phase}"] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        ev = self.run_dir / run_folder.EVAL_LOG
        if ev.exists():
            lines = [json.loads(line) for line in ev.read_text().splitlines() if line.strip()]
            if lines:
                summary["eval"] = lines[-1]
        with atomic_write(self.run_dir / run_folder.SUMMARY, "w") as fh:
            json.dump(summary, fh, indent=2)
        return summary


#: (key, smallest allowed value) of the whole-number settings; None where null is allowed.
_MINIMUM = {"data.batch_size": 1, "data.crop_size": 8, "data.num_workers": 0, "train.epochs": 1,
            "train.warmup_epochs": 0,
            "train.meta_steps": 0, "train.fusion_steps": 1, "train.seed": 0, "run.save_every": 1, "run.keep": 1,
            "run.samples": 0, "run.eval_every": 0, "run.eval_limit": 1, "optim.step_size": 1}
_NULLABLE = {"train.fusion_steps", "run.eval_limit"}
_CHOICES = {"loss.intensity": ("paper", "reference"), "meta.g_update": G_UPDATE_RULES,
            "meta.gradient": ("jvp", "second_order"), "meta.task_inner_step": ("sgd", "adam"),
            "optim.schedule": ("step", "cosine", "none")}
_CHOICES["train.precision"] = PRECISIONS


def check_values(cfg: dict) -> None:
    """Ranges and choices of the run config, checked before anything is built, so a bad
    value is one clear error instead of a failure deep inside a library."""
    def get(key: str):
        section, name = key.split(".")
        return cfg[section][name]

    for key, low in _MINIMUM.items():
        value = get(key)
        if value is None and key in _NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TDFusionError(f"config key {key!r}: expected a whole number >= {low}, got {value!r}")
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            raise TDFusionError(f"config key {key!r}: {get(key)!r} is not one of {', '.join(choices)}")
    for key in ("optim.lr_fusion", "optim.lr_task", "optim.lr_lossgen", "optim.gamma", "meta.inner_lr",
                "meta.task_inner_lr"):
        value = get(key)
        if value is None and key.startswith("meta."):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise TDFusionError(f"config key {key!r}: expected a number >= 0, got {value!r}")
    # A run resumed from a checkpoint older than run.loggers kept only the JSONL log: so it stays.
    loggers = cfg["run"].setdefault("loggers", ["jsonl"])
    if not isinstance(loggers, list) or any(name not in LOGGERS for name in loggers):
        raise TDFusionError(f"config key 'run.loggers': expected a list of {', '.join(LOGGERS)}, got {loggers!r}")
    for key in ("task.name", "dataset.name", "dataset.train_split", "fusion.arch", "lossgen.arch"):
        if not isinstance(get(key), str) or not get(key):
            raise TDFusionError(f"config key {key!r}: expected a name, got {get(key)!r}")
    if not isinstance(cfg["dataset"].get("options") or {}, dict):
        raise TDFusionError(f"config key 'dataset.options': expected a mapping, got {cfg['dataset']['options']!r}")
    size = get("data.task_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)):
        raise TDFusionError(f"config key 'data.task_size': expected null or [height, width] (whole numbers >= 8), "
                            f"got {size!r}")


def _link_or_copy(source: Path, dest: Path) -> None:
    """Make ``dest`` name the file ``source`` names now, replacing ``dest`` atomically.

    A hard link: a step checkpoint costs no space while it equals last.pt, and keeps its
    content when last.pt is later replaced (a rename gives last.pt a new file). Where the
    file system has no hard links, a copy.
    """
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _batches(loader: DataLoader) -> Iterator[dict]:
    """Iterate a loader; a data error raised in a worker process comes back as the one-line
    message it was raised with (the DataLoader re-raises it wrapped in the worker's traceback)."""
    try:
        yield from loader
    except TDFusionError as exc:
        lines = str(exc).strip().splitlines()
        marker = "TDFusionError: "
        if len(lines) > 1 and marker in lines[-1]:
            raise TDFusionError(lines[-1].split(marker, 1)[1]) from None
        raise


def set_determinism(enabled: bool, device: torch.device) -> None:
    """``train.deterministic``: deterministic kernels (bit-identical CPU runs for a seed).

    On CUDA, ops that have no deterministic kernel warn instead of failing the run (see
    ``docs/distributed.md``, "Determinism"); cuBLAS needs its workspace pinned, which must
    happen before its first use, hence the environment variable.
    """
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


# -- fault injection for the tests (docs/robustness.md) ------------------------------------
_FAULT_ENV = "TDFUSION_FAULT"


def _fault(name: str) -> int | None:
    """``TDFUSION_FAULT=name:N`` -> N for ``name``; None when not set (the normal case)."""
    spec = os.environ.get(_FAULT_ENV, "")
    key, _, value = spec.partition(":")
    return int(value) if key == name and value.isdigit() else None


def _die_while_writing(ckpt: dict, path: Path) -> None:
    """Simulate a SIGKILL halfway through a checkpoint write: half the bytes reach the
    temporary file, then the process dies before the rename (no cleanup can run)."""
    buffer = io.BytesIO()
    torch.save({"format": "tdfusion", **ckpt}, buffer)
    data = buffer.getvalue()
    with atomic_write(path) as fh:
        fh.write(data[:len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def train(cfg: dict, run_dir: str | Path, resume_from: str | Path | None = None) -> dict[str, Any]:
    """Build a :class:`MetaTrainer` and run it; returns the summary."""
    return MetaTrainer(cfg, run_dir, resume_from).fit()
