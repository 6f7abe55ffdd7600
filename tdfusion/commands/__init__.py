"""Subcommands of the ``tdfusion`` command line (see :mod:`tdfusion.cli`).

Each ``<name>.py`` exposes ``register(subparsers)``. ``SUMMARY`` (order = order in
``tdfusion --help``) lets the top-level help list every command without importing any
of them (and torch with them).
"""

SUMMARY = {
    "fuse": 'fuse image pairs with a checkpoint',
    "synth": 'generate the synthetic infrared/visible dataset',
    "train": 'train a fusion network with a task-driven learnable loss',
    "eval": "diagnostic: a checkpoint's own task network on its fused images and baselines",
    "compare": "compare fusion methods on a task: the task network retrained per source, over seeds",
    "inspect": "what a trained run's loss generator G and fusion network F do (per class, saturation, ranges)",
    "metrics": 'fusion quality metrics (EN SD SF AG MI SCD VIF Qabf SSIM) of one or more methods',
    "report": "visual HTML report: sources, each method's result, metrics",
    "data": 'list datasets, check a dataset folder',
    "convert": 'convert annotations (VOC XML -> YOLO txt)',
    "bench": 'measure inference and meta-iteration speed and memory',
    "export": 'export the fusion network to ONNX or TorchScript',
}

#: Arithmetic of the fusion network (``--precision`` of fuse and bench): torch dtype names.
PRECISIONS = ("float32", "bfloat16", "float16")
