"""Checkpoints: the toolkit's own format and the published ReFusion state_dicts.

Toolkit checkpoint (a dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "tdfusion", "version": 1,
     "fusion":  {"arch": "fusion",  "config": {...}, "state_dict": {...}},
     "lossgen": {"arch": "lossgen", "config": {...}, "state_dict": {...}},   # optional
     "task":    {"name": "seg", "config": {...}, "state_dict": {...}},       # optional
     "epoch": int, "step": int, "extra": {...}}                              # training state

Only ``fusion`` is needed to fuse; it carries its architecture config so a checkpoint
can be used without any training code or config file.

Published ReFusion checkpoints (``ReFusion_{IVIF,MIF,MFIF,MEIF}.pth``) are plain
state_dicts of the reference network, where each convolution weight appears twice
(``x.weight`` and ``x.conv.weight``, the same tensor). :func:`convert_refusion_state_dict`
checks the twins agree, renames the keys to this toolkit's module names and infers the
architecture from the tensor shapes.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from .errors import TDFusionError
from .io import atomic_write
from .nets import create_model

FORMAT = "tdfusion"
VERSION = 1

__all__ = [
    "FORMAT", "VERSION", "build_fusion_net", "convert_refusion_state_dict", "load_checkpoint", "load_fusion_net",
    "load_module", "load_weights_file", "module_record", "safe_torch_load", "save_checkpoint", "trained_lossgen",
    "TRUST_HINT",
]

# Reference name -> toolkit name, applied in order to each key (first match wins per rule).
_REFUSION_RENAMES: list[tuple[str, str]] = [
    (r"^project_in_1\.", "embed_a."),
    (r"^project_in_2\.", "embed_b."),
    (r"^encoder1\.", "encoder_a."),
    (r"^encoder2\.", "encoder_b."),
    (r"\.norm([12])\.body\.", r".norm\1."),
    (r"\.attn\.qkv\.weight$", ".attn.qkv.point.weight"),
    (r"\.attn\.qkv_dwconv\.", ".attn.qkv.depth."),
    (r"\.attn\.project_out\.", ".attn.proj."),
    (r"\.ffn\.project_in\.", ".ffn.expand.point."),
    (r"\.ffn\.dwconv\.", ".ffn.expand.depth."),
    (r"\.ffn\.project_out\.", ".ffn.proj."),
    (r"^FM\.temperature1$", "afm.temperature_a"),
    (r"^FM\.temperature2$", "afm.temperature_b"),
    (r"^FM\.qkv1\.", "afm.qkv_a.point."),
    (r"^FM\.qkv1_dwconv\.", "afm.qkv_a.depth."),
    (r"^FM\.qkv2\.", "afm.qkv_b.point."),
    (r"^FM\.qkv2_dwconv\.", "afm.qkv_b.depth."),
    (r"^FM\.project_mid1\.", "afm.cross_a."),
    (r"^FM\.project_mid2\.", "afm.cross_b."),
    (r"^FM\.project_E\.", "afm.gate.point."),
    (r"^FM\.project_E_d\.", "afm.gate.depth."),
    (r"^FM\.project_E1\.", "afm.expand_a.point."),
    (r"^FM\.project_E1_d\.", "afm.expand_a.depth."),
    (r"^FM\.project_E2\.", "afm.expand_b.point."),
    (r"^FM\.project_E2_d\.", "afm.expand_b.depth."),
    (r"^FM\.project_out1\.", "afm.proj_a."),
    (r"^FM\.project_out2\.", "afm.proj_b."),
    (r"^project_out_0\.", "head.0."),
    (r"^project_out_1\.", "head.2."),
]


def _is_refusion_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "project_in_1.weight" in obj and "FM.temperature1" in obj


def convert_refusion_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint"
                                ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Published ReFusion state_dict -> ``(fusion net config, toolkit state_dict)``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".conv." in key:
            twin = key.replace(".conv.", ".")
            if twin not in sd or not torch.equal(sd[twin], value):
                raise TDFusionError(f"{source}: duplicated weight {key} differs from {twin}")
            continue
        new = key
        for pattern, repl in _REFUSION_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    try:
        dim = sd["project_in_1.weight"].shape[0]
        heads = sd["FM.temperature1"].shape[0]
        num_blocks = len({k.split(".")[1] for k in sd if k.startswith("encoder1.")})
        hidden = sd["encoder1.0.ffn.project_in.weight"].shape[0] // 2
    except (KeyError, IndexError) as exc:
        raise TDFusionError(f"{source}: incomplete ReFusion state_dict ({exc})") from None
    config = dict(dim=int(dim), num_blocks=int(num_blocks), heads=int(heads), ffn_expansion=hidden / dim)
    return config, out


def _looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as text (UTF-8, no control bytes but white space)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # the cut may have split a multi-byte character at the end
            text = head[:-3].decode("utf-8") if len(head) > 3 else ""
        except UnicodeDecodeError:
            return False
    return bool(text) and all(c.isprintable() or c in "\t\n\r\f" for c in text)


def _unreadable_reason(path: str | os.PathLike) -> str | None:
    """A short description of a file torch could not read, from its first bytes; None when
    its content says nothing clearer than torch's own error."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return "a Git LFS pointer, not the file itself: git lfs pull fetches it"
    if head.startswith(b"PK\x03\x04"):  # torch's zip format (torch.save since 1.6)
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "corrupt or truncated file"  # no intact central directory: cut or damaged
        if not any(n.endswith("/data.pkl") for n in names):
            return "a zip archive without PyTorch data"
        return "corrupt or truncated file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "corrupt or truncated file"  # a pickle (torch's legacy format) that ends early
    if _looks_like_text(head):
        lowered = head.lstrip()[:64].lower()
        if lowered.startswith((b"<!doctype html", b"<html")):
            return "an HTML page, not a PyTorch file"
        return "a text file, not a PyTorch file"
    return None


def _short(text: str, limit: int = 120) -> str:
    """The first sentence of ``text``, at most ``limit`` characters."""
    text = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _read_error(path: str | os.PathLike, what: str, exc: Exception) -> TDFusionError:
    """The one-line error for a file ``torch.load`` failed on, without torch's advice to load unsafely."""
    reason = _unreadable_reason(path)
    if reason is not None:
        return TDFusionError(f"{path}: not a readable {what} ({reason})")
    # torch's own text suggests retrying with weights_only=False, i.e. running whatever
    # the file contains: keep only the lines that say what is wrong.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()
             and not re.search(r"weights.only|torch\.load|https?://|trusted source", line, re.I)]
    detail = _short(lines[0]) if lines else "not a PyTorch file"
    return TDFusionError(f"{path}: not a readable {what} ({type(exc).__name__}: {detail})")


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint",
                    map_location: str | torch.device = "cpu", trust_hint: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    Weights only: a file that needs full unpickling (a pickled Python object, which can run
    any code while it loads) is refused, and so is anything that is not a torch file. The
    message never relays torch's advice to retry with ``weights_only=False``; where the
    caller offers a safe opt-in, ``trust_hint`` names it. A cut or damaged file, an empty
    one, a text file or a Git LFS pointer is said in a few words, not in torch's.
    """
    try:
        with warnings.catch_warnings():
            # Garbage bytes can look like an odd pickle protocol to torch, which then warns
            # before it fails: the one-line error below says all there is to say.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        text = str(exc)
        found = re.search(r"unsupported GLOBAL ([\w.]+)", text, re.I) or re.search(r"global: GLOBAL ([\w.]+)", text)
        if found:
            hint = f"; {trust_hint}" if trust_hint else ""
            raise TDFusionError(f"{path}: not a readable {what}: it holds pickled Python objects ({found.group(1)}), "
                                f"which could run code when loaded; tdfusion loads weights only{hint}") from None
        raise _read_error(path, what, exc) from None


#: What a weights-only refusal of a task weights file suggests (det, seg and recon honour it).
TRUST_HINT = ("pass --trust-weights (task.trust_weights: true) to unpickle it anyway, only for a file "
              "from a source you trust, or give a plain state_dict (torch.save(model.state_dict(), path))")


def load_weights_file(path: str | os.PathLike, what: str = "weights file", trust: bool = False,
                      trust_hint: str | None = TRUST_HINT) -> Any:
    """A task weights file: weights only (:func:`safe_torch_load`), or, with ``trust``
    (``--trust-weights``), fully unpickled -- which runs any code the file carries, so only
    for files from a trusted source. Errors are one line naming the file either way."""
    if not trust:
        return safe_torch_load(path, what, trust_hint=trust_hint)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling raises whatever the file's objects raise
        raise _read_error(path, what, exc) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file as a toolkit-format dict (published ReFusion files converted).

    ``path`` may also name a published model (``refusion-ivif``..., see
    :mod:`tdfusion.hub`): it is downloaded to the cache once and read from there.
    Raises :class:`TDFusionError` naming the file when it is missing, unreadable, or of
    an unknown kind.
    """
    from .hub import closest_model, resolve_checkpoint

    path = resolve_checkpoint(path)
    if not path.is_file():
        guess = closest_model(path)
        if guess is not None:
            raise TDFusionError(f"{path}: no such checkpoint file nor published model name; did you mean {guess!r}?")
        raise TDFusionError(f"{path}: no such checkpoint file (nor a published model name: "
                            f"tdfusion fuse --help lists them)")
    obj = safe_torch_load(path, "checkpoint", map_location)
    if _is_refusion_state_dict(obj):
        config, sd = convert_refusion_state_dict(obj, str(path))
        return {"format": FORMAT, "version": VERSION,
                "fusion": {"arch": "fusion", "config": config, "state_dict": sd},
                "extra": {"origin": "published ReFusion checkpoint"}}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        version = obj.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise TDFusionError(f"{path}: checkpoint version {version!r} is not a whole number")
        if version > VERSION:
            raise TDFusionError(f"{path}: checkpoint version {obj['version']} is newer than this "
                                f"toolkit understands ({VERSION}); upgrade tdfusion")
        return dict(obj)
    raise TDFusionError(f"{path}: neither a tdfusion checkpoint nor a published ReFusion state_dict")


def _build(record: Mapping, what: str, path: str) -> nn.Module:
    if not isinstance(record, Mapping):
        raise TDFusionError(f"{path}: the {what} record is a {type(record).__name__}, not a mapping")
    for field in ("arch", "config", "state_dict"):
        if field not in record:
            raise TDFusionError(f"{path}: the {what} record has no {field!r} field")
    try:
        net = create_model(record["arch"], **record["config"])
    except (TypeError, ValueError) as exc:
        raise TDFusionError(f"{path}: cannot build the {what} network ({exc})") from None
    if not isinstance(record["state_dict"], Mapping):
        raise TDFusionError(f"{path}: the {what} weights are a {type(record['state_dict']).__name__}, not a mapping")
    try:
        net.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise TDFusionError(f"{path}: {what} weights do not match its architecture ({detail})") from None
    return net


def build_fusion_net(ckpt: Mapping, path: str = "checkpoint") -> nn.Module:
    """The fusion network of a loaded checkpoint (on the CPU, in training mode)."""
    if "fusion" not in ckpt:
        raise TDFusionError(f"{path}: checkpoint holds no fusion network")
    return _build(ckpt["fusion"], "fusion", str(path))


def load_fusion_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the fusion network stored in a checkpoint (a file or a published model name);
    returns ``(net in eval mode, checkpoint)``."""
    ckpt = load_checkpoint(path)
    net = build_fusion_net(ckpt, str(path))
    return net.to(device).eval(), ckpt


def load_module(ckpt: Mapping, key: str, path: str = "checkpoint") -> nn.Module:
    """Build the network stored under ``ckpt[key]`` (``"fusion"`` or ``"lossgen"``)."""
    if key not in ckpt:
        raise TDFusionError(f"{path}: checkpoint holds no {key} network")
    return _build(ckpt[key], key, path)


def trained_lossgen(ckpt: Mapping, path: str = "checkpoint") -> nn.Module | None:
    """The loss generator G that the checkpoint's run trained and used, in eval mode; None
    when the checkpoint holds none or comes from the fixed-weight ablation (whose saved G
    never left its initialisation)."""
    if "lossgen" not in ckpt or ckpt.get("extra", {}).get("config", {}).get("loss", {}).get("fixed_weights"):
        return None
    return load_module(ckpt, "lossgen", path).eval()


def module_record(arch: str, net: nn.Module) -> dict:
    """The ``{"arch", "config", "state_dict"}`` record of a registered network."""
    return {"arch": arch, "config": dict(net.config),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}


def save_checkpoint(ckpt: Mapping, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename)."""
    payload = {"format": FORMAT, "version": VERSION, **ckpt}
    with atomic_write(path) as fh:
        torch.save(payload, fh)
