"""Data-parallel training: 2 CPU processes (Gloo) launched by torchrun, against one process.

The claim under test (docs/distributed.md): W processes with ``data.batch_size = B``
compute what one process computes with ``data.batch_size = B * W`` (the same global batch,
drawn from the same keys), through both phases, the meta phase included, whose inner step
averages gradients inside the autograd graph. The reference is a plain single-process run
of the trainer, which never touches torch.distributed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tdfusion.training import distributed
from tdfusion.config import apply_overrides, load_config
from tdfusion.errors import TDFusionError

REPO = Path(__file__).resolve().parents[1]

# Tiny networks and images: the point is the arithmetic, not the model.
TINY = ["train.device=cpu", "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1",
        "task.dim=8", "task.num_blocks=1", "data.crop_size=16", "dataset.options.size=[32,32]",
        "dataset.options.length=8", "run.samples=1", "run.eval_limit=2", "train.epochs=2", "train.meta_steps=2",
        "train.fusion_steps=2", "run.save_every=3", "data.swap_sources=true"]
PER_RANK_BATCH = 1
WORLD = 2

# Runs the real command line under torchrun; after training, each rank also dumps the
# parameters it holds (only rank 0 writes checkpoints, so rank 1's would be invisible).
WORKER = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    from tdfusion.training import trainer
    from tdfusion.cli import main

    dump_dir = sys.argv[1]
    original_fit = trainer.MetaTrainer._fit

    def fit_and_dump(self):
        summary = original_fit(self)
        nets = {"fusion": self.fusion, "lossgen": self.lossgen, "task": self.task_net}
        state = {name: {k: v.detach().clone() for k, v in net.state_dict().items()} for name, net in nets.items()}
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(state, os.path.join(dump_dir, f"rank{rank}.pt"))
        return summary

    trainer.MetaTrainer._fit = fit_and_dump
    sys.exit(main(["train", *sys.argv[2:]]))
""")


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT")}
    # One thread per process: 2 processes share 2 cores, and OpenMP spin-waits badly otherwise.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with Gloo is not available in this build")
    root = tmp_path_factory.mktemp("dist")
    worker = root / "worker.py"
    worker.write_text(WORKER)
    dump = root / "dump"
    dump.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(worker), str(dump), "--config", str(REPO / "configs" / "synthetic_recon.yaml"),
           "--out", str(root / "ddp"), *TINY, f"data.batch_size={PER_RANK_BATCH}"]
    proc = subprocess.run(cmd, cwd=root, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # The reference: one process, the global batch, the trainer alone (no process group).
    from tdfusion.training.trainer import MetaTrainer

    cfg = apply_overrides(load_config(REPO / "configs" / "synthetic_recon.yaml"),
                          TINY + [f"data.batch_size={PER_RANK_BATCH * WORLD}"], load_config(None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = MetaTrainer(cfg, root / "single")
        single.fit()
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {"root": root, "ranks": ranks, "single": single, "stdout": proc.stdout, "stderr": proc.stderr}


def _nets(trainer) -> dict:
    return {"fusion": trainer.fusion.state_dict(), "lossgen": trainer.lossgen.state_dict(),
            "task": trainer.task_net.state_dict()}


def test_every_rank_holds_the_same_parameters(runs):
    first, second = runs["ranks"]
    assert first.keys() == second.keys() == {"fusion", "lossgen", "task"}
    for net in first:
        for name, value in first[net].items():
            assert torch.equal(value, second[net][name]), f"{net}.{name} differs between ranks"


def test_two_processes_equal_one_process_on_the_global_batch(runs):
    # Sums in a different order differ in the last bits; Adam divides by sqrt(v), so an
    # entry whose gradient is ~1e-8 can turn that into a few percent of one step (lr 1e-4).
    # Hence a bound per entry of 2e-5 (a fifth of one step) and a mean difference at
    # rounding level. Leaving out the averaging inside the meta phase's inner step moves
    # G by ~7e-4 here, far outside both.
    reference = _nets(runs["single"])
    for net, state in runs["ranks"][0].items():
        diffs = []
        for name, value in state.items():
            ref = reference[net][name]
            diffs.append((value - ref).abs().flatten())
            assert torch.allclose(value, ref, rtol=0, atol=2e-5), \
                f"{net}.{name}: max difference {(value - ref).abs().max().item():.3g}"
        assert torch.cat(diffs).mean() < 1e-7, net
    assert runs["single"].pos.global_step == 8


def test_parameters_moved_in_both_phases(runs):
    # G learns only in the meta phase, F and T only in the fusion phase: all must change,
    # so the equality above covers both phases.
    from tdfusion.training.trainer import MetaTrainer

    cfg = apply_overrides(load_config(REPO / "configs" / "synthetic_recon.yaml"),
                          TINY + ["data.batch_size=2"], load_config(None))
    fresh = _nets(MetaTrainer(cfg, runs["root"] / "unused"))
    for net, state in runs["ranks"][0].items():
        moved = max((state[k] - fresh[net][k]).abs().max().item() for k in state)
        assert moved > 1e-5, f"{net} did not train"


def test_rank0_alone_writes_one_log_line_per_step_with_global_means(runs):
    ddp = [json.loads(line) for line in (runs["root"] / "ddp" / "train_log.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (runs["root"] / "single" / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in ddp] == list(range(1, 9))  # a second writer would duplicate lines
    for d, s in zip(ddp, single):
        losses = [k for k in s if k.startswith("loss")]
        assert losses and set(losses) <= set(d)
        for k in losses:  # rank-averaged losses = losses of the global batch
            assert d[k] == pytest.approx(s[k], rel=1e-5, abs=1e-7), (d["global_step"], k)


def test_checkpoint_written_by_rank0_holds_the_synchronised_weights(runs):
    ckpt = torch.load(runs["root"] / "ddp" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["world_size"] == WORLD
    for net, key in (("fusion", "fusion"), ("lossgen", "lossgen"), ("task", "task")):
        for name, value in runs["ranks"][1][net].items():
            assert torch.equal(ckpt[key]["state_dict"][name], value)
    kept = sorted(p.name for p in (runs["root"] / "ddp").glob("step_*.pt"))
    assert kept == ["step_0000003.pt", "step_0000006.pt"]


def test_only_rank0_prints(runs):
    out = runs["stdout"]
    assert out.count("run folder:") == 1 and "on 2 processes" in out
    assert out.count("checkpoint:") == 1


# -- helpers, single process --------------------------------------------------------------
def test_shard_takes_contiguous_equal_slices():
    batch = list(range(6))
    parts = [distributed.shard(batch, r, 3) for r in range(3)]
    assert parts == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="does not split"):
        distributed.shard(list(range(5)), 0, 2)


def test_topology_from_torchrun_variables():
    topo = distributed.topology_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.distributed) == (3, 1, 4, True)
    assert not distributed.topology_from_env({}).distributed
    with pytest.raises(TDFusionError, match="WORLD_SIZE='two'"):
        distributed.topology_from_env({"WORLD_SIZE": "two"})
    with pytest.raises(TDFusionError, match="inconsistent"):
        distributed.topology_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_single_process_helpers_are_identities():
    assert not dist.is_initialized()
    topo, device = distributed.setup("cpu", environ={"WORLD_SIZE": "1"})
    assert not topo.distributed and device.type == "cpu" and not dist.is_initialized()
    t = [torch.randn(3, requires_grad=True)]
    assert distributed.mean_tensors(t)[0] is t[0]
    assert distributed.reduce_metrics({"a": 1.5}) == {"a": 1.5}
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.broadcast_object("x") == "x" and distributed.gather_objects(1) == [1]


# -- determinism ----------------------------------------------------------------------------------
def test_deterministic_runs_are_bit_identical_with_and_without_loader_workers(tmp_path):
    """``--deterministic``: two CPU runs of one seed give the same bits, every parameter;
    the second run loads its data in 2 worker processes (crops and flips are keyed per
    sample, so workers must not change anything)."""
    from tdfusion.training.trainer import MetaTrainer

    base = apply_overrides(load_config(REPO / "configs" / "synthetic_recon.yaml"),
                           TINY + ["data.batch_size=2", "train.deterministic=true", "train.epochs=1"],
                           load_config(None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = MetaTrainer(base, tmp_path / "first")
        assert torch.are_deterministic_algorithms_enabled()
        first.fit()
        second = MetaTrainer(apply_overrides(base, ["data.num_workers=2"]), tmp_path / "second")
        second.fit()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    a, b = _nets(first), _nets(second)
    fresh = _nets(MetaTrainer(base, tmp_path / "unused"))
    torch.use_deterministic_algorithms(False)
    for net in a:
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs between the two runs"
        assert any(not torch.equal(a[net][k], fresh[net][k]) for k in a[net]), f"{net} did not train"
