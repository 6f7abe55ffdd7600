"""Published models by name: a table, a download cache and a checksum check.

``resolve_checkpoint("refusion-ivif")`` returns the path of a local copy of that model,
downloading it the first time into the cache folder:

* ``$TDFUSION_HOME/models`` when ``TDFUSION_HOME`` is set, otherwise the user's cache
  folder (``platformdirs.user_cache_dir("tdfusion")``, e.g. ``~/.cache/tdfusion/models``).
* ``$TDFUSION_MIRROR`` (a URL or folder) replaces the publishers' servers: files are then
  fetched from ``<mirror>/<file name>`` (an offline mirror, a company proxy, the tests'
  local server).

A download goes to a temporary file next to its final name, is checked against the
table's sha256 (where it is known) and only then renamed into place, so a corrupt or cut
download is never cached. Anything that is not a model name is returned unchanged, as a
path.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import TDFusionError

__all__ = ["MODELS", "PublishedModel", "cache_dir", "closest_model", "download", "file_sha256", "resolve_checkpoint"]

# Commits the files were published at. A commit, not a branch, so that a file cannot change
# under its checksum: ReFusion's is the commit the shared byte copies (and so the sha256
# below) come from; TDFusion's is the commit that added its models/ folder.
_REFUSION = "https://raw.githubusercontent.com/HaowenBai/ReFusion/54b733420e67042aa6ddd146ec3edef902122930/models/"
_TDFUSION = "https://raw.githubusercontent.com/HaowenBai/TDFusion/7cdb02ad1d8602c0f32f064f2cd4800e89892a48/models/"
_NO_LICENCE = "no licence file in the publishers' repository: research use, cite the paper, ask the authors before redistributing"


@dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint: where it lives, its checksum and what it holds."""

    name: str              # --checkpoint NAME
    file: str              # file name, also its name in the cache and on a mirror
    url: str
    sha256: str | None     # None: unknown offline, the download cannot be verified
    paper: str
    task: str              # what it fuses
    layout: str            # how the file is organised (what load_checkpoint reads)
    licence: str = _NO_LICENCE


_REFUSION_LAYOUT = "ReFusion state_dict of Fnet (each conv weight stored twice), no G"
_TDFUSION_LAYOUT = "state_dict of the same Fnet as ReFusion (nets/ReFusion.py), no G; not verified offline"

MODELS: dict[str, PublishedModel] = {m.name: m for m in (
    PublishedModel("refusion-ivif", "ReFusion_IVIF.pth", _REFUSION + "ReFusion_IVIF.pth",
                   "1b8358d8dab5e95c9d3f668782abda85359685669444946001ac41ea96891b2c", "ReFusion (IJCV 2024)",
                   "infrared-visible", _REFUSION_LAYOUT),
    PublishedModel("refusion-mif", "ReFusion_MIF.pth", _REFUSION + "ReFusion_MIF.pth",
                   "5cc483457390ea8ffeeedbf41287adf23880f860b2f9b6b6045329598fd2e0e5", "ReFusion (IJCV 2024)",
                   "medical (CT/PET/SPECT-MRI)", _REFUSION_LAYOUT),
    PublishedModel("refusion-mfif", "ReFusion_MFIF.pth", _REFUSION + "ReFusion_MFIF.pth",
                   "0ba2c1070a37e3a067afa66c39eae7e96e782d9261afcab454af069c460221f2", "ReFusion (IJCV 2024)",
                   "multi-focus", _REFUSION_LAYOUT),
    PublishedModel("refusion-meif", "ReFusion_MEIF.pth", _REFUSION + "ReFusion_MEIF.pth",
                   "6815d372069b2b96a59c02dff31d42d7d5604c5507227c5b6801d967832461d4", "ReFusion (IJCV 2024)",
                   "multi-exposure", _REFUSION_LAYOUT),
    PublishedModel("tdfusion-msrs", "TDFusion_MSRS.pth", _TDFUSION + "TDFusion_MSRS.pth", None,
                   "TDFusion (CVPR 2025)", "infrared-visible, trained on MSRS", _TDFUSION_LAYOUT),
    PublishedModel("tdfusion-fmb", "TDFusion_FMB.pth", _TDFUSION + "TDFusion_FMB.pth", None,
                   "TDFusion (CVPR 2025)", "infrared-visible, trained on FMB", _TDFUSION_LAYOUT),
    PublishedModel("tdfusion-m3fd", "TDFusion_M3FD.pth", _TDFUSION + "TDFusion_M3FD.pth", None,
                   "TDFusion (CVPR 2025)", "infrared-visible, trained on M3FD", _TDFUSION_LAYOUT),
    PublishedModel("tdfusion-llvip", "TDFusion_LLVIP.pth", _TDFUSION + "TDFusion_LLVIP.pth", None,
                   "TDFusion (CVPR 2025)", "infrared-visible, trained on LLVIP", _TDFUSION_LAYOUT),
)}

_CHUNK = 1 << 16


def cache_dir() -> Path:
    """Where downloaded models are kept: ``$TDFUSION_HOME/models`` or the user cache folder."""
    home = os.environ.get("TDFUSION_HOME")
    if home:
        return Path(home).expanduser() / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("tdfusion")) / "models"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_url(model: PublishedModel) -> str:
    mirror = os.environ.get("TDFUSION_MIRROR")
    if not mirror:
        return model.url
    if "://" not in mirror:  # a local folder
        return Path(mirror).expanduser().absolute().joinpath(model.file).as_uri()
    return mirror.rstrip("/") + "/" + model.file


def closest_model(name: str | os.PathLike) -> str | None:
    """The published model name closest to ``name`` (a misspelling such as ``refusion-ivf``,
    ``ReFusion_IVIF``), or None when nothing is close or ``name`` is a path with folders."""
    import difflib

    text = str(name)
    if not text or "/" in text or "\\" in text:
        return None
    key = text.lower().replace("_", "-")
    stem = key.rsplit(".", 1)[0] if key.endswith((".pth", ".pt")) else key
    for candidate in (key, stem):
        if candidate in MODELS:
            return candidate
    found = difflib.get_close_matches(stem, list(MODELS), n=1, cutoff=0.75)
    return found[0] if found else None


def _http_problem(model: PublishedModel, url: str, exc: Exception) -> str | None:
    """The one-line message for a server that answered with an HTTP error (not a connection
    problem): a mirror's is named as the mirror's, with the file it lacks."""
    import urllib.error

    if not isinstance(exc, urllib.error.HTTPError):
        return None
    status = f"HTTP {exc.code}" + (f" {exc.reason}" if exc.reason else "")
    mirror = os.environ.get("TDFUSION_MIRROR")
    if mirror:
        missing = "does not have" if exc.code in (404, 410) else "refused"
        return (f"{url}: the mirror TDFUSION_MIRROR={mirror} {missing} {model.file} ({status}); put {model.file} "
                f"there, or unset TDFUSION_MIRROR to download {model.name} from its publisher")
    return (f"{url}: the publisher's server answered {status} for {model.file} ({model.name}); put a copy of "
            f"{model.file} in {cache_dir()} or set TDFUSION_MIRROR to a folder or server holding it")


def download(model: PublishedModel, dest: Path, quiet: bool = False) -> Path:
    """Fetch ``model`` to ``dest`` with a progress bar, verify it, then rename it into place.

    The standard library's urllib, not torch.hub: its downloader verifies only a hash
    *prefix* given in the file name and draws a tqdm bar; this keeps the toolkit's rich
    bars and its :func:`~tdfusion.io.atomic_write` (fsync + rename).
    """
    # Imported here: the command line lists MODELS in --help without loading OpenCV.
    import urllib.error
    import urllib.request

    from .io import atomic_write
    from .progress import progress_bar

    url = _source_url(model)
    mirror = os.environ.get("TDFUSION_MIRROR")
    if mirror and "://" not in mirror and not Path(mirror).expanduser().joinpath(model.file).is_file():
        folder = Path(mirror).expanduser()
        raise TDFusionError(f"{folder / model.file}: the mirror folder TDFUSION_MIRROR={mirror} has no "
                            f"{model.file}" + ("" if folder.is_dir() else " (the folder does not exist)"))
    offline = (f"cannot download {model.name} from {url} ({{reason}}); check the connection, or put "
               f"{model.file} in {dest.parent} (or set TDFUSION_MIRROR to a folder holding it)")
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the table's https URLs or a chosen mirror
    except (urllib.error.URLError, OSError, ValueError) as exc:
        problem = _http_problem(model, url, exc)
        if problem is not None:
            raise TDFusionError(problem) from None
        raise TDFusionError(offline.format(reason=getattr(exc, "reason", None) or exc)) from None
    digest = hashlib.sha256()
    with response, atomic_write(dest) as fh:
        total = int(response.headers.get("Content-Length") or 0)
        with progress_bar(total or 1, f"downloading {model.file}", enabled=not quiet and total > 0,
                          unit="bytes") as advance:
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    fh.write(block)
                    digest.update(block)
                    advance(len(block))
            except OSError as exc:
                raise TDFusionError(offline.format(reason=exc)) from None
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            # Raised inside atomic_write: the temporary file is removed, nothing is cached.
            raise TDFusionError(f"{url}: sha256 {digest.hexdigest()} does not match the published "
                                f"{model.sha256}; the download was discarded")
    if model.sha256 is None and not quiet:
        print(f"note: {model.name}: sha256 unknown offline, the download was not verified "
              f"(sha256 {digest.hexdigest()})")
    return dest


def resolve_checkpoint(name_or_path: str | os.PathLike, quiet: bool = False) -> Path:
    """A model name from :data:`MODELS` -> the path of its cached (downloaded if needed)
    copy; anything else -> the path as given.

    An existing file wins over a model name of the same spelling. A cached copy is
    re-hashed before use when its checksum is known, so a damaged cache is noticed.
    """
    path = Path(name_or_path)
    key = str(name_or_path).lower()
    if path.exists() or key not in MODELS:
        return path
    model = MODELS[key]
    dest = cache_dir() / model.file
    if dest.is_file():
        if model.sha256 is None or file_sha256(dest) == model.sha256:
            return dest
        if not quiet:
            print(f"note: {dest}: checksum differs from the published one; downloading it again")
    return download(model, dest, quiet)
