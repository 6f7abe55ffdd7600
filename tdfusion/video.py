"""Video: two frame streams fused frame by frame (``tdfusion fuse --a ir.mp4 --b vis.mp4``).

A stream is a video file (decoded with OpenCV's FFmpeg backend) or a folder of numbered
frames (any image format ``tdfusion fuse`` reads, ordered by the number in the name).
Frames go through the same steps as image pairs (luminance fused by the network, chroma
from the sources, ``--normalize``), a batch of frames at a time.

Output: a video file when ``--out`` ends in a video extension (the codec follows it,
:data:`CODECS`), otherwise a folder of numbered PNG frames. A video is written to a
temporary name next to the destination and renamed when complete; frames are written
atomically one by one.

Quality: FFV1 (``.mkv``, ``.avi``) is lossless; MPEG-4 part 2 (``.mp4``, ``.mov``,
``.m4v``) and VP9 (``.webm``) are lossy. ``--lossless`` refuses a lossy codec instead of
writing one; ``--crf N`` sets a constant-rate factor through OpenCV's
``VIDEOWRITER_PROP_CRF``, which OpenCV passes only to encoders that have one (VP9 here;
H.264 where OpenCV was built with it) and refuses for MPEG-4 part 2 and FFV1.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .errors import TDFusionError
from .io import Image, _to_unit_float, image_size, list_images, publish, read_image

__all__ = ["CODECS", "LOSSLESS_CODECS", "VIDEO_EXTENSIONS", "FrameStream", "VideoWriter", "is_video", "open_stream"]

#: Container extension -> FourCC written. FFV1 (.mkv, .avi) is lossless; MPEG-4 part 2
#: (.mp4, .mov, .m4v) plays everywhere; VP9 (.webm) takes ``--crf``. OpenCV's pip wheels
#: ship no H.264 encoder.
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "FFV1", ".avi": "FFV1", ".webm": "VP90"}
#: FourCCs whose frames decode to exactly the pixels written (8-bit RGB in, checked in tests).
LOSSLESS_CODECS = ("FFV1", "HFYU", "png ")
#: FourCCs whose encoders have no constant-rate factor (OpenCV refuses --crf for them).
_NO_CRF = ("MP4V", "XVID", "DIVX", "MJPG")
_CODEC_NAMES = {"mp4v": "MPEG-4 part 2", "FFV1": "FFV1", "VP90": "VP9", "HFYU": "HuffYUV", "png ": "PNG"}
VIDEO_EXTENSIONS = (*CODECS, ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DEFAULT_FPS = 25.0


def is_video(path: str | os.PathLike) -> bool:
    """Whether a path names a video file (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class FrameStream:
    """Frames of one source, in order. ``count`` is exact for folders and as the container
    states it for video files (checked again while decoding)."""

    path: Path
    count: int
    size: tuple[int, int]          # (H, W)
    fps: float | None              # None for a frame folder
    names: list[str]               # frame names (stems), for frame-folder output
    _frames: Callable[[], Iterator[Image]]

    def frames(self) -> Iterator[Image]:
        return self._frames()


def _natural_key(stem: str) -> tuple:
    # frame_2 before frame_10: numbers compare as numbers.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem))


def _folder_stream(folder: Path) -> FrameStream:
    images = list_images(folder)
    if not images:
        raise TDFusionError(f"{folder}: no frames (images) in this folder")
    names = sorted(images, key=_natural_key)
    size = image_size(images[names[0]])  # its header: the frame is decoded when its turn comes

    def frames() -> Iterator[Image]:
        for name in names:
            yield read_image(images[name])

    return FrameStream(folder, len(names), size, None, names, frames)


@contextlib.contextmanager
def _capture(path: Path):
    cap = cv2.VideoCapture(str(path))
    try:
        yield cap
    finally:
        cap.release()


def _video_stream(path: Path) -> FrameStream:
    if not path.is_file():
        raise TDFusionError(f"{path}: no such video file")
    with _capture(path) as cap:
        if not cap.isOpened():
            raise TDFusionError(f"{path}: not a readable video (corrupt or unsupported format)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
        ok, frame = cap.read()
    if not ok or frame is None:
        raise TDFusionError(f"{path}: no decodable frame")
    if count <= 0:
        raise TDFusionError(f"{path}: the container does not state its frame count")
    size = frame.shape[:2]

    def frames() -> Iterator[Image]:
        with _capture(path) as cap:
            for index in range(count):
                ok, raw = cap.read()
                if not ok or raw is None:
                    raise TDFusionError(f"{path}: frame {index + 1} of {count} cannot be decoded")
                yield Image(*_to_unit_float(raw, path))

    return FrameStream(path, count, size, fps, [f"{i + 1:06d}" for i in range(count)], frames)


def open_stream(path: str | os.PathLike) -> FrameStream:
    """A video file or a folder of numbered frames as a :class:`FrameStream`."""
    path = Path(path)
    if path.is_dir():
        return _folder_stream(path)
    if not path.exists():
        raise TDFusionError(f"{path}: no such file or folder")
    if not is_video(path):
        raise TDFusionError(f"{path}: not a video file ({', '.join(VIDEO_EXTENSIONS)}) nor a frame folder")
    return _video_stream(path)


def _codec_name(fourcc: str) -> str:
    name = _CODEC_NAMES.get(fourcc)
    return f"{fourcc} ({name})" if name and name != fourcc else fourcc


_CRF_ELSEWHERE = "write .webm (VP9), which takes --crf, or .mkv (FFV1) for lossless frames"


def _crf_advice(fourcc: str) -> str:
    """What to do about a refused ``--crf``: a clause starting with ``; ``."""
    if fourcc.upper() in ("VP90", "VP09"):
        return "; VP9 takes 3 to 63 in OpenCV's FFmpeg build (lower: closer to the frames, larger file)"
    return f"; it may have no constant-rate factor here: {_CRF_ELSEWHERE}"


def check_quality(path: Path, fourcc: str, crf: int | None, lossless: bool, codec_given: bool = False) -> None:
    """Refuse ``--lossless`` with a lossy codec, ``--crf`` with a lossless one or with
    ``--lossless``, before anything is computed or written."""
    if crf is not None and lossless:
        raise TDFusionError("--crf and --lossless exclude each other: --lossless keeps every pixel, --crf trades "
                            "pixels for size")
    lossless_codec = fourcc.upper() in (c.upper() for c in LOSSLESS_CODECS)
    if lossless and not lossless_codec:
        how = "--codec" if codec_given else f"{path.suffix.lower()} files are written with"
        raise TDFusionError(f"{path}: --lossless, but {how} {_codec_name(fourcc)}, which is lossy; "
                            f"write .mkv or .avi (FFV1, lossless) or give --codec FFV1")
    if crf is not None:
        if lossless_codec:
            raise TDFusionError(f"{path}: --crf {crf}, but {fourcc} is lossless and has no quality setting; "
                                f"leave --crf out, or write .webm (VP9) for a smaller lossy file")
        if fourcc.upper() in _NO_CRF:
            how = "--codec" if codec_given else f"{path.suffix.lower()} files are written with"
            raise TDFusionError(f"{path}: --crf {crf}, but {how} {_codec_name(fourcc)}, which has no constant-rate "
                                f"factor; {_CRF_ELSEWHERE}")
        if not hasattr(cv2, "VIDEOWRITER_PROP_CRF"):
            raise TDFusionError(f"--crf needs OpenCV's VIDEOWRITER_PROP_CRF, which OpenCV {cv2.__version__} lacks")


@contextlib.contextmanager
def _opencv_quiet():
    """OpenCV's log and its FFmpeg backend's direct writes to stderr, silenced while a
    writer is opened: a refused setting becomes one ``error:`` line, not three."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    before = logging.getLogLevel() if logging is not None else None
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if logging is not None:
            logging.setLogLevel(before)


class VideoWriter:
    """Frames -> a video file, written under a temporary name and renamed by :meth:`commit`.

    Frames are uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB; grey frames are stored as three
    equal channels (what every player expects). ``crf``: the encoder's constant-rate factor
    (VP9: 3-63); ``lossless``: refuse a lossy codec (:func:`check_quality`).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], codec: str | None = None,
                 crf: int | None = None, lossless: bool = False):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        fourcc = codec or CODECS.get(suffix)
        if fourcc is None or len(fourcc) != 4:
            raise TDFusionError(f"{self.path}: no codec for {suffix!r} videos; use one of {', '.join(CODECS)} "
                                f"or give --codec FOURCC")
        check_quality(self.path, fourcc, crf, lossless, codec_given=codec is not None)
        params: list[int] = []
        if crf is not None:
            params = [cv2.VIDEOWRITER_PROP_CRF, int(crf)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name keeps the extension: OpenCV picks the container from it.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".tmp{suffix}", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        h, w = size
        with _opencv_quiet():  # OpenCV prints its own lines about codec tags and refused settings
            if params:
                self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h), params)
            else:
                self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if not self._writer.isOpened():
            refused_crf = False
            if crf is not None:  # the codec itself, or only the setting?
                with _opencv_quiet():
                    probe = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                refused_crf = probe.isOpened()
                probe.release()
            self.abort()
            if refused_crf:
                raise TDFusionError(f"{self.path}: OpenCV's {_codec_name(fourcc)} encoder refused --crf {crf}"
                                    f"{_crf_advice(fourcc)}")
            raise TDFusionError(f"{self.path}: OpenCV cannot write {fourcc} into {suffix} files here")

    def write(self, frame: np.ndarray) -> None:
        bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        self._writer.write(np.ascontiguousarray(bgr))

    def commit(self) -> None:
        self._writer.release()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.release()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
