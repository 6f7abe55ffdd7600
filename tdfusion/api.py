"""The Python API: fuse arrays, tensors or PIL images in memory, and score them.

>>> import tdfusion
>>> fuser = tdfusion.Fuser.from_pretrained("refusion-ivif")   # or a path to a .pt/.pth
>>> fused = fuser(ir, vis)                                     # same kind as the inputs

Inputs (each source one of):

* numpy arrays ``(H, W)`` grey or ``(H, W, 3)`` RGB, dtype ``uint8``, ``uint16`` or float
  in [0, 1];
* torch tensors ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` (channels first, as torchvision),
  same dtypes (``torch.uint16`` included);
* PIL images (modes ``L``, ``I;16``, ``I``, ``F``, ``RGB``, ``RGBA``, ``P``...).

Conventions are those of ``tdfusion fuse``, so the same pair gives the same pixels
through the API and through the command line: integers are scaled by their full range,
an RGB source whose channels are equal is grey, the network fuses luminance, colour comes
from the sources' chroma (a grey and a colour source give a colour result), the fused
luminance is min-max stretched (``normalize="minmax"``), and integer results are rounded.

The result has the kind of the inputs: the same container (numpy, tensor, PIL), the dtype
of the sources (the wider of two integer dtypes; ``float32`` once a source is float, or
the float dtype both share), grey ``(H, W)`` or RGB ``(H, W, 3)`` (tensors: ``(C, H, W)``
when the inputs had a channel axis).

:func:`fusion_metrics` scores arrays with the same conventions, and an explicit
``data_range`` where the dtype does not say it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import TDFusionError
from .io import Image, collapse_gray

__all__ = ["Fuser", "fusion_metrics", "to_image"]

_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class _Kind:
    """What an input looked like, so the result can be given back the same way."""

    container: str            # "numpy" | "torch" | "pil"
    dtype: Any                # numpy dtype of the pixels as given
    channel_axis: bool = False  # torch: (C, H, W) rather than (H, W)
    device: Any = None        # torch: the input's device


def _numpy_of(x: Any, name: str) -> tuple[np.ndarray, _Kind]:
    """Any supported input -> ``(H, W)`` or ``(H, W, 3|4)`` numpy array and its kind."""
    if isinstance(x, np.ndarray):
        return x, _Kind("numpy", x.dtype)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.ndim == 3:
            if t.shape[0] not in (1, 3):
                raise TDFusionError(f"{name}: tensor of shape {tuple(t.shape)}: expected (H, W), (1, H, W) or "
                                    f"(3, H, W) (channels first)")
            arr = t.permute(1, 2, 0).cpu().numpy()
        elif t.ndim == 2:
            arr = t.cpu().numpy()
        else:
            raise TDFusionError(f"{name}: tensor of shape {tuple(t.shape)}: expected (H, W), (1, H, W) or (3, H, W); "
                                f"fuse a batch one image at a time")
        return arr, _Kind("torch", arr.dtype, t.ndim == 3, t.device)
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - Pillow is a dependency
        PILImage = None
    if PILImage is not None and isinstance(x, PILImage.Image):
        im = x
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        if im.mode == "LA":
            im = im.getchannel("L")
        arr = np.asarray(im)
        if im.mode == "I":  # 32-bit integer grey: PIL's mode for many 16-bit PNGs
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise TDFusionError(f"{name}: PIL mode I values outside 0..65535")
            arr = arr.astype(np.uint16)
        return arr, _Kind("pil", arr.dtype)
    raise TDFusionError(f"{name}: unsupported type {type(x).__name__}; give a numpy array, a torch tensor "
                        f"or a PIL image")


def _unit_pixels(arr: np.ndarray, name: str, data_range: float | None) -> tuple[np.ndarray, int]:
    """numpy pixels -> float32 in [0, 1] ``(H, W)`` or ``(H, W, 3)`` and the depth (8/16) to
    round a result to; the checks that make a wrong input an error instead of a wrong picture."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:  # alpha ignored, as tdfusion fuse does
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise TDFusionError(f"{name}: shape {arr.shape}: expected (H, W) grey or (H, W, 3) RGB")
    if min(arr.shape[:2]) < 1:
        raise TDFusionError(f"{name}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        full = 255.0 if arr.dtype == np.uint8 else 65535.0
        scale = full if data_range is None else float(data_range)
        if data_range is not None and arr.max() > scale:
            raise TDFusionError(f"{name}: values up to {int(arr.max())} exceed data_range {data_range:g}")
        # Depth 8 marks pixels that are exactly v / 255 (results are rounded to 8 bits and
        # the metrics undo the division exactly); anything else is kept at 16-bit precision.
        depth = 8 if scale == 255.0 else 16
        return (arr.astype(np.float32) / np.float32(scale)), depth
    if arr.dtype in _FLOATS:
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise TDFusionError(f"{name}: contains NaN or infinite values")
        scale = 1.0 if data_range is None else float(data_range)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > scale:
            hint = ("; 8-bit values in a float array: divide by 255 or pass uint8" if data_range is None and hi <= 255
                    else "")
            raise TDFusionError(f"{name}: float values {lo:g}..{hi:g} outside [0, {scale:g}]{hint}")
        return (x / np.float32(scale) if scale != 1.0 else x), 16
    raise TDFusionError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")


def to_image(x: Any, name: str = "image", data_range: float | None = None) -> tuple[Image, _Kind]:
    """An input in any supported kind -> (:class:`~tdfusion.io.Image` as ``tdfusion fuse``
    reads it, its kind). ``data_range``: the value of white where the dtype does not say
    it (default: the integer dtype's maximum, 1.0 for floats). Raises
    :class:`~tdfusion.errors.TDFusionError` naming ``name`` for a wrong type, dtype,
    shape or range."""
    arr, kind = _numpy_of(x, name)
    pixels, depth = _unit_pixels(np.asarray(arr), name, data_range)
    return Image(collapse_gray(pixels), depth), kind  # tdfusion fuse's rule


def _result_kind(ka: _Kind, kb: _Kind) -> _Kind:
    if ka.container != kb.container:
        raise TDFusionError(f"a is a {ka.container} input and b a {kb.container} one; give both the same kind")
    da, db = np.dtype(ka.dtype), np.dtype(kb.dtype)
    if da == db:
        dtype = da
    elif da.kind == "u" and db.kind == "u":
        dtype = max(da, db, key=lambda d: d.itemsize)
    else:
        dtype = np.dtype(np.float32)
    return _Kind(ka.container, dtype, ka.channel_axis or kb.channel_axis, ka.device)


def _from_unit(pixels: np.ndarray, kind: _Kind) -> Any:
    """float [0, 1] result -> the kind of the inputs (rounded like tdfusion fuse's files)."""
    from .io import to_integer

    dtype = np.dtype(kind.dtype)
    if dtype.kind == "u":
        out = to_integer(pixels, 8 if dtype == np.uint8 else 16)
    else:
        out = pixels.astype(dtype)
    if kind.container == "numpy":
        return out
    if kind.container == "torch":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(out))
        if kind.channel_axis:
            t = t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t[None]
        return t.to(kind.device)
    from PIL import Image as PILImage

    if out.dtype == np.uint16 and out.ndim == 2:
        return PILImage.fromarray(out, mode="I;16") if _pil_takes_mode() else PILImage.fromarray(out)
    if out.dtype != np.uint8:  # PIL has no 16-bit or float RGB mode: 8-bit colour
        out = to_integer(pixels, 8)
    return PILImage.fromarray(out)


def _pil_takes_mode() -> bool:
    # Pillow 11 deprecates the mode argument of fromarray (it infers I;16 from uint16).
    import PIL

    return int(PIL.__version__.split(".")[0]) < 11


class Fuser:
    """A fusion network ready to fuse in-memory images.

    Build it with :meth:`from_pretrained`. ``fuser(a, b)`` fuses one pair;
    ``fuser.weights(a, b)`` returns the loss generator's weight maps when the checkpoint
    holds G (checkpoints written by ``tdfusion train`` do; the published ones do not).

    Args:
        net: a fusion network (``(B,1,H,W) x2 -> (B,1,H,W)``), in eval mode.
        lossgen: the loss generator G, or None.
        normalize: ``"minmax"`` (default, as ``tdfusion fuse``) or ``"none"``.
        gray: return only the fused luminance, even when a source has colour.
        max_memory, chunk_rows: bound the network's memory (see ``tdfusion fuse``).
        precision: the fusion network's arithmetic, as ``tdfusion fuse --precision``:
            ``"float32"`` (default), ``"bfloat16"`` (CPU or GPU) or ``"float16"`` (CUDA
            only). The network is converted in place.
        threads: at most this many CPU threads while fusing, as ``tdfusion fuse --threads``
            (applied with :func:`tdfusion.device.set_threads` for each call, and the previous
            thread counts restored after it; None: leave them as they are).
        batch: pairs of one size per network call when fusing lists, as ``tdfusion fuse
            --batch`` (None, the default: 8 on GPU, one pair at a time through the banded
            executor on CPU). The results do not depend on it.
        source: the checkpoint path the networks came from (for provenance).
    """

    def __init__(self, net, lossgen=None, *, normalize: str = "minmax", gray: bool = False,
                 max_memory: int | str | None = None, chunk_rows: int | None = None,
                 precision: str = "float32", threads: int | None = None, batch: int | None = None,
                 source: str | os.PathLike | None = None):
        if normalize not in ("minmax", "none"):
            raise TDFusionError(f"normalize={normalize!r}: expected 'minmax' or 'none'")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise TDFusionError(f"batch={batch!r}: expected a whole number of at least 1, or None")
        self.batch = batch
        _check_options(precision, threads, next(net.parameters()).device)
        self.net, self.lossgen = _with_precision(net, precision), lossgen
        self.normalize, self.gray = normalize, gray
        self.max_memory, self.chunk_rows = max_memory, chunk_rows
        self.precision, self.threads = precision, threads
        self.source = None if source is None else str(source)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device=None, **options) -> "Fuser":
        """Load a published model by name (``tdfusion.hub.MODELS``: ``"refusion-ivif"``...,
        downloaded once into the cache) or a checkpoint file (``runs/x/last.pt``, a
        ``ReFusion_*.pth``). ``device``: ``"cpu"``, ``"cuda"``... (default: CUDA when
        available). ``options``: see the class (``precision=``, ``threads=``, ``gray=``...)."""
        from .checkpoint import load_checkpoint, load_module, build_fusion_net
        from .device import resolve_device
        from .hub import resolve_checkpoint

        dev = resolve_device(device)
        _check_options(options.get("precision", "float32"), options.get("threads"), dev)  # before any download
        path = resolve_checkpoint(name_or_path)
        ckpt = load_checkpoint(path)
        net = build_fusion_net(ckpt, str(path)).to(dev).eval()
        lossgen = load_module(ckpt, "lossgen", str(path)).to(dev).eval() if "lossgen" in ckpt else None
        return cls(net, lossgen, source=path, **options)

    @property
    def device(self):
        return next(self.net.parameters()).device

    def _pair(self, a: Any, b: Any) -> tuple[Image, Image, _Kind]:
        ia, ka = to_image(a, "a")
        ib, kb = to_image(b, "b")
        if ia.size != ib.size:
            (ha, wa), (hb, wb) = ia.size, ib.size
            raise TDFusionError(f"b: size {wb}x{hb} differs from a ({wa}x{ha}); resize one source first")
        return ia, ib, _result_kind(ka, kb)

    def __call__(self, a: Any, b: Any) -> Any:
        """Fuse one pair, or two lists of sources pair by pair (a list of results, in
        order; pairs of one size share network calls, ``batch``); see the module docstring
        for the accepted inputs and the result."""
        from .inference import fuse_image_groups, fuse_images

        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                raise TDFusionError(f"a and b: lists of {len(a)} and {len(b)} sources; pairs need equal lengths")
            pairs = [self._pair(x, y) for x, y in zip(a, b)]
            batch = self.batch if self.batch is not None else (8 if self.device.type == "cuda" else None)
            out: list[Any] = [None] * len(pairs)
            with _threads(self.threads):
                for indices, results in fuse_image_groups(
                        self.net, [(ia, ib) for ia, ib, _ in pairs], batch, normalize=self.normalize,
                        gray=self.gray, max_memory=self.max_memory, chunk_rows=self.chunk_rows):
                    for i, (_, fused) in zip(indices, results):
                        out[i] = _from_unit(fused, pairs[i][2])
            return out
        ia, ib, kind = self._pair(a, b)
        with _threads(self.threads):
            _, out = fuse_images(self.net, ia, ib, normalize=self.normalize, gray=self.gray,
                                 max_memory=self.max_memory, chunk_rows=self.chunk_rows)
        return _from_unit(out, kind)

    def weights(self, a: Any, b: Any) -> dict[str, Any]:
        """G's per-pixel weight maps for source A: ``{"w_a": (H, W)}`` (intensity) and, for
        ReFusion's G, ``"v_a"`` (gradient), each float32 in [0, 1] (1 = all weight on A;
        B's maps are 1 minus A's), as numpy arrays (tensors for tensor inputs)."""
        if self.lossgen is None:
            raise TDFusionError(f"{self.source or 'this checkpoint'}: holds no loss generator G (published "
                                f"models hold only the fusion network; checkpoints of tdfusion train have G)")
        ia, ib, kind = self._pair(a, b)
        with _threads(self.threads):
            maps = loss_weight_maps(self.lossgen, ia.pixels, ib.pixels)
        if kind.container != "torch":
            return maps
        import torch

        return {k: torch.from_numpy(v).to(kind.device) for k, v in maps.items()}


def _check_options(precision: str, threads: int | None, device) -> None:
    """The checks ``tdfusion fuse`` makes of ``--precision`` and ``--threads``, as API errors."""
    from .commands import PRECISIONS

    if precision not in PRECISIONS:
        raise TDFusionError(f"precision={precision!r}: expected one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "float16" and getattr(device, "type", str(device)) != "cuda":
        raise TDFusionError("precision='float16' needs a CUDA device; use 'bfloat16' on CPU")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise TDFusionError(f"threads={threads!r}: expected a whole number of at least 1, or None")


def _with_precision(net, precision: str):
    """``net`` in the precision's dtype, as ``tdfusion fuse --precision`` loads it."""
    import torch

    return net.to(getattr(torch, precision))


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """``tdfusion fuse --threads n`` (:func:`tdfusion.device.set_threads`) inside the block;
    torch's and OpenCV's thread counts and ``OMP_NUM_THREADS`` as they were after it."""
    if n is None:
        yield
        return
    import cv2
    import torch

    from .device import set_threads

    before = torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        if before[2] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before[2]


def loss_weight_maps(lossgen, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """G's weight maps for A from two sources' pixels (float [0, 1], grey or RGB, same size):
    ``{"w_a": (H, W)[, "v_a": (H, W)]}`` float32. G sees the luminance, as in training."""
    import torch

    from .colour import split_luma

    param = next(lossgen.parameters())
    ya, yb = (torch.from_numpy(np.ascontiguousarray(split_luma(x)[0]))[None, None].to(param.device, param.dtype)
              for x in (a, b))
    with torch.inference_mode():
        w = lossgen(ya, yb)[0].float().cpu().numpy()
    # Channels are [w_a, w_b(, v_a, v_b)]; the B maps are 1 minus the A maps.
    return {name: w[c] for name, c in (("w_a", 0), ("v_a", 2)) if c < w.shape[0]}


def fusion_metrics(fused: Any, a: Any, b: Any, *, data_range: float | None = None,
                   metrics: Iterable[str] | None = None, vif_reduction: str = "mean") -> dict[str, float]:
    """EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM of one fused image and its sources.

    Inputs as for :class:`Fuser` (numpy, tensors, PIL; grey or RGB; colour is scored on
    its luminance). ``data_range`` is the value of white: by default the integer dtype's
    maximum (255 for uint8, 65535 for uint16) and 1.0 for floats; give it for anything
    else (``data_range=255`` for float arrays on [0, 255]). Values outside the range are an
    error, not a silently wrong score. Every image is then scored as ``tdfusion metrics``
    scores files: 8-bit luminance (see :func:`tdfusion.metrics.luminance_255`), so the
    values equal the command's for the same pictures.
    """
    from .metrics.evaluate import METRIC_NAMES, evaluate, luminance_255

    ys = []
    for name, x in (("fused", fused), ("a", a), ("b", b)):
        image, _ = to_image(x, name, data_range)
        # Depth 8 (uint8 input on its full range) is exactly v/255: luminance_255 undoes it
        # exactly, as it does for 8-bit files.
        ys.append(luminance_255(image))
    try:
        return evaluate(*ys, vif_reduction=vif_reduction, metrics=metrics or METRIC_NAMES)
    except ValueError as exc:
        raise TDFusionError(str(exc)) from None

