"""Training runs: the trainer (Algorithm 1 epoch by epoch, checkpoints, resume, faults), what it
builds, validates and writes, and the torchrun process group.

* :mod:`~tdfusion.training.trainer`: ``train(cfg, run_dir)`` and ``MetaTrainer`` (the loop);
* :mod:`~tdfusion.training.modules`: ``build_splits`` and ``build_modules`` (what a run config builds);
* :mod:`~tdfusion.training.batches`: the keyed batches of each phase and the run's position;
* :mod:`~tdfusion.training.validator`: the test-split diagnostic and which epoch is ``best.pt``;
* :mod:`~tdfusion.training.callbacks`: hooks of the loop; samples and report after each epoch;
* :mod:`~tdfusion.training.checks`: the config's ranges and choices, and each step's losses;
* :mod:`~tdfusion.training.health`: F's collapse and G's saturation, measured and warned about;
* :mod:`~tdfusion.training.resume`: which checkpoints can be resumed;
* :mod:`~tdfusion.training.run_folder`: the run folder's file names, log truncation, summary;
* :mod:`~tdfusion.training.runlog`: CSV and TensorBoard logs;
* :mod:`~tdfusion.training.distributed`: the process group and gradient averaging.
"""
