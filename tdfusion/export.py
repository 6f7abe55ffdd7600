"""Export the fusion network to a file that runs without tdfusion (``tdfusion export``).

Two formats, both of the module's whole-image forward pass with dynamic batch, height
and width:

* ``onnx``: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``; the
  TorchScript-based ONNX exporter cannot follow :mod:`tdfusion.nets.blocks`), run by
  onnxruntime or any ONNX runtime;
* ``torchscript``: ``torch.jit.trace`` (scripting cannot compile the blocks' Python
  annotations), loaded with ``torch.jit.load`` and plain torch.

The file's interface (docs/deploy.md): inputs ``a``, ``b`` float32 ``(N, 1, H, W)``
luminance in [0, 1]; output ``fused`` ``(N, 1, H, W)``, the raw sigmoid output, what
``tdfusion fuse --raw`` saves. Colour handling and the min-max stretch stay outside.

Every export is checked before it is kept: the file is run on random pairs of two
sizes other than the one it was traced at, and compared with the module (within
:data:`TOLERANCE`); a file that disagrees is not written.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import TDFusionError
from .io import atomic_write

__all__ = ["EXTENSIONS", "FORMATS", "TOLERANCE", "check_export", "check_out_path", "export_network", "onnx_runner",
           "torchscript_runner"]

FORMATS = ("onnx", "torchscript")
#: File extensions each format may be written under (the first is the one suggested). A
#: TorchScript file is not a ``.pth``: that name is the convention for state_dicts and
#: checkpoints, which an export must not be taken for (or overwrite).
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
#: Largest absolute difference to the torch module an exported file may show (the parity bar).
TOLERANCE = 1e-4
#: Sizes the check runs at, (N, H, W): odd sizes and a batch, none of them the traced one.
CHECK_SHAPES = ((1, 37, 53), (2, 96, 72))
_TRACE_SHAPE = (2, 1, 64, 80)  # size-1 axes would be specialised by torch.export

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _example(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)


def _onnx_bytes(net: nn.Module) -> bytes:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise TDFusionError("--format onnx needs the onnx and onnxscript packages: "
                            "pip install 'tdfusion[export]'") from None
    a, b = _example(_TRACE_SHAPE, 0)
    batch, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "height", "width"))
    dims = {0: batch, 2: height, 3: width}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # The exporter reports its progress on stdout and warns that the two inputs' axes
        # share names; neither is the user's business.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (a, b), dynamo=True, input_names=["a", "b"], output_names=["fused"],
                                    dynamic_shapes={"a": dims, "b": dims}, verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(str(path), external_data=False)
            return path.read_bytes()


def _torchscript_bytes(net: nn.Module) -> bytes:
    a, b = _example(_TRACE_SHAPE, 0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; it still works
        traced = torch.jit.trace(net, (a, b), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def onnx_runner(data: bytes | str | os.PathLike, threads: int | None = None) -> Runner:
    """Run an exported ONNX file with onnxruntime: ``(a, b) -> fused`` on numpy arrays."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TDFusionError("checking an ONNX export needs onnxruntime: pip install 'tdfusion[export]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    model = data if isinstance(data, bytes) else str(data)
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return lambda a, b: session.run(["fused"], {"a": a, "b": b})[0]


def torchscript_runner(data: bytes | str | os.PathLike) -> Runner:
    """Run an exported TorchScript file: ``(a, b) -> fused`` on numpy arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data) if isinstance(data, bytes) else str(data), map_location="cpu")

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(a), torch.from_numpy(b)).numpy()

    return run


def check_export(net: nn.Module, run: Runner, shapes=CHECK_SHAPES) -> float:
    """Largest absolute difference between ``run`` and the module over random pairs of ``shapes``."""
    worst = 0.0
    for i, (n, h, w) in enumerate(shapes):
        a, b = _example((n, 1, h, w), 100 + i)
        with torch.no_grad():
            ref = net(a, b).numpy()
        out = run(a.numpy(), b.numpy())
        if out.shape != ref.shape:
            raise TDFusionError(f"exported network returns {out.shape} for {ref.shape} inputs")
        worst = max(worst, float(np.abs(out.astype(np.float64) - ref).max()))
    return worst


def check_out_path(out: str | os.PathLike, fmt: str, checkpoint: str | os.PathLike | None = None) -> None:
    """Refuse an output name whose extension belongs to another format (``--format onnx
    --out model.pt`` would replace a TorchScript file with an ONNX one), a folder, and the
    checkpoint being exported itself."""
    if fmt not in FORMATS:
        raise TDFusionError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise TDFusionError(f"{out}: --out is a folder; give a file name such as model{EXTENSIONS[fmt][0]}")
    suffix = out.suffix.lower()
    if suffix not in EXTENSIONS[fmt]:
        exts = EXTENSIONS[fmt]
        wants = f"--format {fmt} writes {', '.join(exts[:-1]) + ' or ' + exts[-1] if len(exts) > 1 else exts[0]} files"
        example = out.with_name(out.name + exts[0]) if not suffix else out.with_suffix(exts[0])
        other = [f for f, e in EXTENSIONS.items() if suffix in e]
        if other:
            problem = f"a {suffix} name is for --format {other[0]}; {wants}"
        elif not suffix:
            problem = f"--out has no extension; {wants}"
        else:
            problem = f"{wants}, not {suffix}"
        raise TDFusionError(f"{out}: {problem} (e.g. {example.name}); nothing written")
    if checkpoint is not None and Path(checkpoint).exists() and out.exists() and out.samefile(checkpoint):
        raise TDFusionError(f"{out}: --out is the checkpoint being exported; give another file name")


def export_network(net: nn.Module, out: str | os.PathLike, fmt: str) -> float:
    """Export ``net`` (float32, CPU, eval mode) to ``out`` in ``fmt``; returns the check's max difference.

    Nothing is written unless the exported file reproduces the module within :data:`TOLERANCE`,
    nor under a name of another format's extension (:func:`check_out_path`).
    """
    check_out_path(out, fmt)
    net = net.float().cpu().eval()
    data = _onnx_bytes(net) if fmt == "onnx" else _torchscript_bytes(net)
    runner = onnx_runner(data) if fmt == "onnx" else torchscript_runner(data)
    diff = check_export(net, runner)
    if not diff <= TOLERANCE:
        raise TDFusionError(f"{out}: the exported network differs from the module by {diff:.3g} "
                            f"(> {TOLERANCE}); nothing written")
    with atomic_write(out) as fh:
        fh.write(data)
    return diff
