"""Checkpoints written atomically and the CSV loss log that resumes with them."""

from __future__ import annotations

import csv
import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from mega.atomic import atomic_path
from mega.errors import DataError


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save through a temporary file: a kill mid-write leaves the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def checkpoint_identity(path: str | Path, state: dict | None = None) -> str:
    """'<resolved path> sha256:<16 hex digits>' of the tensors a stage's input checkpoint holds
    (face.pt, hair.pt). In a training fingerprint it makes a checkpoint written on an earlier
    version of that input (the stage before trained again) start over instead of resuming on what
    is no longer there. The tensors, not the file's bytes: torch.save names the archive's entries
    after the temporary file it writes, and a stage that is rerun (resuming at its end, or with a
    setting that is allowed to change) writes the same weights again, which must keep resuming.
    ``state``: the file's contents where the caller has loaded them already (not read again)."""
    tensors: dict[str, torch.Tensor] = {}

    def collect(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{prefix}/{key}", item)

    collect("", load_checkpoint(path) if state is None else state)
    return f"{Path(path).resolve()} {state_identity(tensors)}"


def state_identity(state: dict[str, torch.Tensor]) -> str:
    """'sha256:<16 hex digits>' of a module's state (names, shapes, dtypes and values): the
    fingerprint of a model a stage starts from when it has no file of its own."""
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name} {tuple(value.shape)} {value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


CHECKPOINT_KINDS = {  # each stage's file: the keys its readers need, its name, whose it is
    "face": (("config", "model", "frames"), "face.pt", "the face stage's"),
    "hair": (("hair", "hair_config"), "hair.pt", "the canonical-hair stage's"),
    "joint": (("face_config", "model", "frames", "hair_config", "deformation"), "joint.pt", "the joint stage's"),
}


def checkpoint_kind(state: dict) -> str:
    """What a checkpoint's contents look like, in words (for an error about a file passed in the
    wrong place)."""
    if state.get("method") == "gaussianavatars":
        return "the GaussianAvatars baseline's checkpoint (gaussianavatars.pt)"
    for keys, name, whose in CHECKPOINT_KINDS.values():
        if all(key in state for key in keys):
            return f"{whose} checkpoint ({name})"
    return f"a checkpoint with keys {', '.join(sorted(map(str, state)))}"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", kind: str | None = None) -> dict:
    """The contents of a checkpoint that :func:`save_checkpoint` wrote. A missing, truncated or
    corrupt file (a copy cut short, a disk filled up) is a :class:`DataError` that names it,
    for every command that reads one, rather than the unpickler's traceback; so is a file of
    another stage where ``kind`` (face, hair, joint: :data:`CHECKPOINT_KINDS`) asks for one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                        "it is truncated or corrupt: train that stage again (delete the file) or restore "
                        "it") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a checkpoint dictionary, found {type(state).__name__}")
    if kind is not None:
        keys, name, whose = CHECKPOINT_KINDS[kind]
        missing = [key for key in keys if key not in state]
        if missing:
            raise DataError(f"{path}: expected {whose} checkpoint ({name}), found {checkpoint_kind(state)}, "
                            f"without {', '.join(repr(k) for k in missing)}; pass that stage's file")
    return state


class CsvLog:
    """One row per step. Opening with ``resume_step`` keeps the rows up to that step, so a
    resumed run's log reads as one uninterrupted run."""

    def __init__(self, path: str | Path, columns: list[str], resume_step: int | None = None):
        self.path = Path(path)
        self.columns = ["step"] + columns
        kept = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        self.last_row = kept[-1] if kept else None
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")

    def write(self, step: int, values: dict[str, float]) -> None:
        self._writer.writerow({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
