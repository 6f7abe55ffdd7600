"""``tdfusion export``: the fusion network as an ONNX or TorchScript file (docs/deploy.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import SUMMARY

EPILOG = """\
examples:
  tdfusion export --checkpoint ReFusion_IVIF.pth --format onnx --out refusion_ivif.onnx
  tdfusion export --checkpoint runs/demo/last.pt --format torchscript --out fusion.pt

The file takes inputs a, b: float32 (N, 1, H, W) luminance in [0, 1], any N, H, W, and
returns fused (N, 1, H, W), the raw network output. docs/deploy.md shows how to use it
without tdfusion (onnxruntime or plain torch), colour included.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=SUMMARY["export"],
                       description="Export a checkpoint's fusion network (whole-image forward, dynamic size) "
                                   "to ONNX or TorchScript, checked against the torch module before it is written.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="tdfusion checkpoint (e.g. runs/x/last.pt) or published ReFusion_*.pth")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (onnxruntime and other runtimes; default) or torchscript (torch.jit.load)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="file to write; its extension must suit --format: .onnx for onnx, .pt (or .ts, "
                        ".torchscript) for torchscript")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_fusion_net
    from ..export import TOLERANCE, check_out_path, export_network

    out = Path(args.out)
    # Before the checkpoint is read (it may be downloaded): a wrong name wastes nothing.
    check_out_path(out, args.format, args.checkpoint)
    net, _ = load_fusion_net(args.checkpoint, "cpu")
    diff = export_network(net, out, args.format)
    print(f"wrote {out} ({args.format}); checked against the torch module: max difference {diff:.2g} "
          f"(bar {TOLERANCE:g})")
    return 0
