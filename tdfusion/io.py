"""Reading and writing images, pairing source folders, and atomic file output.

Conventions:
* :func:`read_image` returns float32 in [0, 1], ``(H, W)`` for grey or ``(H, W, 3)`` RGB.
  8- and 16-bit integer images are scaled by their full range; float images (e.g.
  radiometric TIFF) already in [0, 1] are kept, others are min-max stretched.
  An alpha channel is dropped; a 3-channel image whose channels are identical is grey.
* Every writer goes through :func:`atomic_write`, so an interrupted run never leaves a
  truncated file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from .errors import TDFusionError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

__all__ = [
    "IMAGE_EXTENSIONS", "Image", "atomic_write", "collapse_gray", "image_size", "link_or_copy", "list_images",
    "match_pairs", "pil_open", "publish", "read_image", "to_integer", "write_image",
]


@dataclass
class Image:
    """A decoded image: ``pixels`` float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)`` RGB."""

    pixels: np.ndarray
    bit_depth: int  # 8 or 16: the depth it should be written back at

    def __post_init__(self) -> None:
        # Integer pixels here would be fused as if 255 were 255.0 times white: refuse them
        # (tdfusion.Fuser takes uint8/uint16 arrays and converts them).
        if not np.issubdtype(np.asarray(self.pixels).dtype, np.floating):
            raise TDFusionError(f"Image pixels must be float in [0, 1], not {np.asarray(self.pixels).dtype}; "
                                f"tdfusion.Fuser takes integer arrays as they are")

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.pixels.shape[:2]


def read_image(path: str | os.PathLike) -> Image:
    """Decode an image file; raise :class:`TDFusionError` naming the file if it can't be."""
    path = Path(path)
    if not path.is_file():
        raise TDFusionError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise TDFusionError(f"{path}: empty file")
    raw = _quiet_imdecode(data)
    if raw is None or raw.size == 0:
        raise TDFusionError(f"{path}: not a readable image (corrupt or unsupported format)")
    return Image(*_to_unit_float(raw, path))


def _quiet_imdecode(data: np.ndarray) -> np.ndarray | None:
    # OpenCV logs its own WARN/ERROR lines to the terminal for corrupt files; we raise
    # one clear error instead, so silence its log for the call and restore it.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def collapse_gray(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` whose three channels are equal -> ``(H, W)``: such an image is grey
    (a grey image saved as RGB); anything else unchanged."""
    if pixels.ndim == 3 and np.array_equal(pixels[:, :, 0], pixels[:, :, 1]) \
            and np.array_equal(pixels[:, :, 1], pixels[:, :, 2]):
        return np.ascontiguousarray(pixels[:, :, 0])
    return pixels


def _to_unit_float(raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim == 3:
        if raw.shape[2] == 2:  # grey + alpha
            raw = raw[:, :, 0]
        elif raw.shape[2] == 4:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
        elif raw.shape[2] == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
        else:
            raise TDFusionError(f"{path}: unsupported number of channels ({raw.shape[2]})")
    raw = collapse_gray(raw)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0, 16
    if raw.dtype in (np.float32, np.float64):
        img = raw.astype(np.float32)
        if not np.isfinite(img).all():
            raise TDFusionError(f"{path}: float image contains NaN or infinite values")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            # Radiometric float images (e.g. temperatures) carry no fixed range.
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        return img, 16
    raise TDFusionError(f"{path}: unsupported pixel type {raw.dtype}")


def pil_open(path: str | os.PathLike):
    """``PIL.Image.open``, with one guard: once ultralytics is imported, it wraps
    ``Image.open`` so that an unidentified file makes it import (and, unless disabled,
    pip-install) a HEIF plugin; that failure is reported as the unidentified image it is."""
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # A damaged TIFF header makes Pillow warn before it fails (or reads the pixels
            # anyway): the caller's one-line error, or the image, is what matters.
            warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
            return PILImage.open(path)
    except ImportError:
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file, reading only its header where possible."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    try:
        with pil_open(path) as im:
            w, h = im.size
        if w > 0 and h > 0:
            return h, w
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    return read_image(path).size  # full decode: gives the precise error if unreadable


def to_integer(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] float -> rounded uint8 (8) or uint16 (16)."""
    scale, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    return np.clip(np.rint(pixels * scale), 0, scale).astype(dtype)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; on success fsync it, rename it into place
    and fsync the folder (so the rename survives a power cut).

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; outputs get the mode open() would give them (or keep
        # the mode of the file they replace), so others can read fused images as usual.
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _mode_of(path))
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_umask() -> int:
    """The process's umask, read without changing it where Linux allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file (written by another library, e.g. OpenCV's video
    writer) into place as :func:`atomic_write` does: the mode ``open()`` would give, fsync
    of the file, rename, fsync of the folder."""
    tmp, path = Path(tmp), Path(path)
    with contextlib.suppress(OSError):  # mkstemp made it 0600; as in atomic_write, a mode is not worth failing for
        os.chmod(tmp, _mode_of(path))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~file_umask()


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the folder's entry table: without this, a power cut
    # right after a "successful" write can bring back the previous file.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_image(path: str | os.PathLike, pixels: np.ndarray, durable: bool = True,
                params: Sequence[int] = ()) -> None:
    """Write a uint8/uint16 ``(H, W)`` or RGB ``(H, W, 3)`` array atomically.

    ``durable=False`` is for scratch files (e.g. ``tdfusion compare``'s source folders):
    the same bytes, written without the two fsyncs, which on a busy disk cost more than
    encoding a small image. ``params``: OpenCV's encoder flags (e.g. JPEG quality).
    """
    path = Path(path)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix or ".png", pixels, list(params))
    if not ok:
        raise TDFusionError(f"{path}: cannot encode image in this format")
    if not durable:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())
        return
    with atomic_write(path) as fh:
        fh.write(buf.tobytes())


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Map stem -> path for the image files directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TDFusionError(f"{folder}: no such folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                raise TDFusionError(f"{p}: two images share the stem {p.stem!r} ({found[p.stem].name})")
            found[p.stem] = p
    return found


def match_pairs(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair two files, or the images of two folders by file stem.

    Returns ``[(stem, path_a, path_b), ...]`` sorted by stem. Raises
    :class:`TDFusionError` for a missing input, an image without a partner, or no images.
    """
    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        return [(a.stem, a, b)]
    for p in (a, b):
        if not p.exists():
            raise TDFusionError(f"{p}: no such file or folder")
    if a.is_dir() != b.is_dir():
        raise TDFusionError(f"{a} and {b}: give two files or two folders")
    imgs_a, imgs_b = list_images(a), list_images(b)
    for stem, p in imgs_a.items():
        if stem not in imgs_b:
            raise TDFusionError(f"{p}: no partner named {stem}.* in {b}")
    for stem, p in imgs_b.items():
        if stem not in imgs_a:
            raise TDFusionError(f"{p}: no partner named {stem}.* in {a}")
    if not imgs_a:
        raise TDFusionError(f"{a}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [(s, imgs_a[s], imgs_b[s]) for s in sorted(imgs_a)]


def link_or_copy(source: Path, dest: Path) -> None:
    """Make ``dest`` name the file ``source`` names now, replacing ``dest`` atomically.

    A hard link: a step checkpoint costs no space while it equals last.pt, and keeps its
    content when last.pt is later replaced (a rename gives last.pt a new file). Where the
    file system has no hard links, a copy.
    """
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
