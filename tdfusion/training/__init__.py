"""Training runs: the trainer (Algorithm 1 epoch by epoch, checkpoints, resume, faults), the
run folder's files and logs, and the torchrun process group.

* :mod:`~tdfusion.training.trainer`: ``train(cfg, run_dir)``, ``MetaTrainer``,
  ``build_modules`` and ``build_task`` (what a run config builds);
* :mod:`~tdfusion.training.run_folder`: the run folder's file names;
* :mod:`~tdfusion.training.runlog`: CSV and TensorBoard logs;
* :mod:`~tdfusion.training.distributed`: the process group and gradient averaging.
"""
