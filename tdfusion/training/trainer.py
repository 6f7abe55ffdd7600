"""Training runs: Algorithm 1 driven epoch by epoch, with checkpoints, logs and resume.

The run folder's files are listed in :mod:`.run_folder`.

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

The trainer runs the loop and owns the state; what a run builds is :mod:`.modules`, the
batches :mod:`.batches`, the test-split diagnostic :mod:`.validator`, the samples and
report :mod:`.callbacks`, and the config checks :mod:`.checks`.
"""
from __future__ import annotations

import json
import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ..checkpoint import module_record, save_checkpoint
from ..data import swap_sources, to_device
from ..device import resolve_device
from ..errors import TDFusionError
from ..evaluation.loop import eval_mode
from ..evaluation.results import jsonable
from ..io import atomic_write, link_or_copy
from ..meta import objectives
from ..meta.updates import apply_meta_gradient, make_optimizer, make_scheduler
from ..precision import autocast, check_precision, grad_scaler
from ..progress import progress_bar
from ..reproducibility import seed_everything, set_determinism
from . import distributed, run_folder
from .batches import (PHASES, Position, TrainViews, batches, loader, loader_workers, phase_keys, shard_batches,
                      timed)
from .callbacks import Callback, default_callbacks
from .checks import check_finite, check_values
from .estimate import print_estimate
from .health import HealthStats, health_warnings
from .modules import build_modules, build_splits, meta_gradient_function
from .resume import note_world_change, read_resumable
from .runlog import RunLoggers
from .validator import BestFitness, Validator

__all__ = ["MetaTrainer", "train"]


class MetaTrainer:
    """Owns the networks, optimisers and data of one run; :meth:`fit` runs it."""

    def __init__(self, cfg: dict, run_dir: str | Path, resume_from: str | Path | None = None,
                 callbacks: Sequence[Callback] = ()):
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
        seed_everything(tc["seed"])

        self.train_set, self.test_set = build_splits(cfg)
        modules = build_modules(cfg, self.train_set, self.device)
        self.task, self.settings = modules.task, modules.settings
        self.fusion, self.lossgen, self.task_net = modules.fusion, modules.lossgen, modules.task_net
        self.validator = None if self.test_set is None else Validator(
            self.task, self.test_set, dc["task_size"], self.device, cfg["run"]["eval_limit"])
        self.best = BestFitness(self.task)
        self.callbacks = [*default_callbacks(), *callbacks]

        oc = cfg["optim"]
        self.opt_f = make_optimizer(self.fusion.parameters(), oc["lr_fusion"])
        self.opt_t = make_optimizer(self.task_net.parameters(), oc["lr_task"])
        self.opt_g = make_optimizer(self.lossgen.parameters(), oc["lr_lossgen"], cfg["meta"]["lossgen_update"])
        epochs = tc["epochs"]
        self.schedulers = [make_scheduler(o, oc["schedule"], epochs, oc["step_size"], oc["gamma"])
                           for o in (self.opt_f, self.opt_t, self.opt_g)]
        self.views = TrainViews(self.train_set, dc["crop_size"], dc["task_size"], dc["hflip"])
        self.pos = Position()
        self.meta_steps = 0 if self.settings.fixed else int(tc["meta_steps"])
        n_batches = math.ceil(len(self.train_set) / (dc["batch_size"] * self.world))
        self.fusion_steps = int(tc["fusion_steps"]) if tc["fusion_steps"] is not None else n_batches
        self._stop_requested = False
        self._stop_agreed = False
        self.loggers: RunLoggers | None = None
        self._resumed = resume_from is not None
        if resume_from is not None:
            self._restore(resume_from)
        # Every process starts from rank 0's weights, whatever its seed or restore did.
        for net in (self.fusion, self.lossgen, self.task_net):
            distributed.broadcast_module_(net)

    # -- data ------------------------------------------------------------------------
    def _phase_batches(self, phase: str, steps: int) -> Any:
        """This process's batches for the remaining steps of a phase (``(train, test)`` pairs for meta)."""
        keys = phase_keys(self.cfg["train"]["seed"], len(self.train_set), self.cfg["data"]["batch_size"] * self.world,
                          self.pos.epoch, phase, steps, self.pos.step)
        keys = shard_batches(keys, phase)

        def load(part):
            return batches(loader(self.views, part, loader_workers(self.cfg["data"]["num_workers"], self.device),
                                  self.device))

        if phase == "meta":
            return zip(load(keys[0]), load(keys[1])) if keys[0] else iter(())
        return ((b, None) for b in load(keys)) if keys else iter(())

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
        grads, logs = meta_gradient_function(mc)(
            self.fusion, objectives.params_of(self.fusion), self.lossgen, g_params, self.task, self.task_net,
            objectives.params_of(self.task_net), train_batch, test_batch, inner_lr, task_lr, self.settings,
            reduce_grads=distributed.mean_tensors if self.world > 1 else None)
        logs["meta_grad_scale"] = apply_meta_gradient(self.opt_g, g_params, grads, mc["lossgen_update"])
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
                "best": self.best.record,
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
            link_or_copy(last, self.run_dir / run_folder.step_checkpoint(self.pos.global_step))
            for old in sorted(self.run_dir.glob("step_*.pt"))[:-max(1, self.cfg["run"]["keep"])]:
                old.unlink(missing_ok=True)
        return last

    def _write(self, ckpt: dict, path: Path) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint_write(self, ckpt, path)
        save_checkpoint(ckpt, path)

    def _restore(self, path: str | Path) -> None:
        ckpt = read_resumable(path, self.task.name)
        state = ckpt["train_state"]
        try:
            self.fusion.load_state_dict(ckpt["fusion"]["state_dict"])
            self.lossgen.load_state_dict(ckpt["lossgen"]["state_dict"])
            self.task_net.load_state_dict(ckpt["task"]["state_dict"])
            for opt, sd in zip((self.opt_f, self.opt_t, self.opt_g), state["optimizers"]):
                opt.load_state_dict(sd)
            for sch, sd in zip(self.schedulers, state["schedulers"]):
                sch.load_state_dict(sd)
            torch.set_rng_state(state["torch_rng"])
            self.best.record = state.get("best")
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.pos = Position(**state["position"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TDFusionError(f"{path}: does not match this run's configuration ({reason})") from None
        if self.is_main:
            note_world_change(path, state, self.world, self.cfg["data"]["batch_size"])
            run_folder.truncate_logs(self.run_dir, self.pos.global_step, self.pos.epoch)

    # -- logging, evaluation ---------------------------------------------------------
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

    def evaluate(self, health: HealthStats | None = None) -> dict[str, Any] | None:
        """The task's metrics on the test split (None without one); ``health`` also gathers
        F's output and G's weights on the same pairs (:mod:`.health`)."""
        if self.validator is None:
            return None
        with eval_mode(self.lossgen):
            return self.validator(self.fusion, self.task_net, None if health is None else health.observe)

    # -- the loop ------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def _after_step(self, logs: dict, stems: list[str]) -> dict:
        if self.world > 1:
            # One collective per step: the averaged logs and whether any process was asked to stop.
            reduced = distributed.reduce_metrics({**logs, "_stop": float(self._stop_requested)})
            self._stop_agreed = reduced.pop("_stop") > 0
            logs = reduced
        check_finite(logs, stems, self.pos, self.run_dir)
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
        iterator = self._phase_batches(phase, steps)
        running: dict[str, float] = {}
        with progress_bar(steps, label, enabled=steps > 0 and self.is_main) as advance:
            advance(self.pos.step)
            for (first, second), waited in timed(iterator):
                if self._should_stop():
                    return False
                if phase == "meta":
                    logs = self.meta_step(self._prepare(first), self._prepare(second))
                else:
                    logs = self.fusion_step(self._prepare(first))
                logs = self._after_step({**logs, "data_s": waited}, first["stems"])
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
            for callback in self.callbacks:
                callback.on_fit_start(self)
        print_estimate(self)  # every process: the timed steps are collective under torchrun
        # SIGTERM too: schedulers (SLURM, Kubernetes) send it before killing a job.
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            summary = self._fit()
            if self.is_main:
                for callback in self.callbacks:
                    callback.on_fit_end(self, summary)
            return summary
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
                if PHASES.index(phase) < PHASES.index(self.pos.phase):
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
                health = HealthStats(None if self.settings.fixed else self.lossgen)
                metrics = self.evaluate(health)
                if metrics is not None:
                    figures = health.figures()
                    self._log(run_folder.EVAL_LOG, {"epoch": self.pos.epoch, **jsonable(metrics), **figures})
                    for line in health_warnings(figures, self.cfg["optim"]):
                        warnings.warn(f"epoch {self.pos.epoch}: {line}", RuntimeWarning, stacklevel=1)
            improved = metrics is not None and self.best.update(metrics, self.pos.epoch)
            self.save("epoch")
            self.save("last")  # records the best epoch, so a resumed run compares against it
            if improved and self.is_main:
                link_or_copy(self.run_dir / run_folder.LAST, self.run_dir / run_folder.BEST)
            if self.is_main:
                for callback in self.callbacks:
                    callback.on_epoch_end(self, self.pos.epoch, metrics)
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        if not self.is_main:
            return {"run": str(self.run_dir), "epochs": self.pos.epoch, "global_steps": self.pos.global_step}
        return run_folder.write_summary(self.run_dir, self.pos.epoch, self.pos.global_step, PHASES)


def train(cfg: dict, run_dir: str | Path, resume_from: str | Path | None = None,
          callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Build a :class:`MetaTrainer` and run it; returns the summary."""
    return MetaTrainer(cfg, run_dir, resume_from, callbacks).fit()
