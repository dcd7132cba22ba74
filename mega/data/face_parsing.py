"""Face parsing of a subject's images with facexlib's parsers, in CelebAMask-HQ's label order.

MeGA's masks (``mega.data.parsing``) assume CelebAMask-HQ's 19 labels, the authors' parser's.
facexlib has two parsers: ParseNet, trained on CelebAMask-HQ (the same order), and BiSeNet,
trained with face-parsing.PyTorch's order, remapped here (:data:`BISENET_TO_CELEBAMASK`). Their
weights come from a file the user gives (``preprocess.parsing_weights``); nothing is downloaded.

Both parsers see 512 × 512 face crops: a square around the foreground mask's bounding box (with
a margin), resized; the labels are resized back with nearest sampling and pasted into a frame
of background. Output per image: ``<out>/<sequence>/<timestep>_<camera>_labels.png`` (8-bit
labels), written atomically, so an interrupted run keeps what it wrote and resumes after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from mega.atomic import atomic_path
from mega.data.gaussian_avatars import SubjectFrames, read_png
from mega.errors import ConfigError, DataError

CROP = 512
MARGIN = 0.25
"""The crop's side is the mask's larger side × (1 + 2 · MARGIN)."""
# face-parsing.PyTorch (BiSeNet) label → CelebAMask-HQ label.
BISENET_TO_CELEBAMASK = np.array([0, 1, 6, 7, 4, 5, 3, 8, 9, 15, 2, 10, 11, 12, 17, 16, 18, 13, 14], np.uint8)
WEIGHTS_SOURCE = {
    "bisenet": "parsing_bisenet.pth of facexlib's GitHub release v0.2.0",
    "parsenet": "parsing_parsenet.pth of facexlib's GitHub release v0.2.2",
}


def build_parser(model: str) -> torch.nn.Module:
    """facexlib's network of that name, untrained."""
    if model == "bisenet":
        from facexlib.parsing.bisenet import BiSeNet

        return BiSeNet(num_class=19)
    if model == "parsenet":
        from facexlib.parsing.parsenet import ParseNet

        return ParseNet(in_size=CROP, out_size=CROP, parsing_ch=19)
    raise ConfigError(f"face parser '{model}': expected bisenet or parsenet")


def load_parser(model: str, weights: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The parser with its weights from ``weights`` (a state dict, as facexlib publishes them)."""
    weights = Path(weights)
    if not weights.is_file():
        raise ConfigError(f"{weights}: the face parser's weights are missing (preprocess.parsing_weights); expected "
                          f"{WEIGHTS_SOURCE.get(model, model)}, downloaded once by you and given by path")
    network = build_parser(model)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("params", state) if isinstance(state, dict) else state, strict=True)
    except (RuntimeError, KeyError, AttributeError, TypeError) as error:
        first = str(error).strip().splitlines()[0][:300]
        raise DataError(f"{weights}: not {model} weights ({first}); expected {WEIGHTS_SOURCE[model]}") from None
    except Exception as error:  # noqa: BLE001 - an unreadable file: one message
        raise DataError(f"{weights}: cannot be read as a torch state dict ({type(error).__name__})") from None
    return network.eval().requires_grad_(False).to(device)


def crop_box(mask: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the square crop around a foreground mask [H, W]; the whole frame's
    larger side when the mask is empty. May reach outside the frame."""
    rows, cols = np.nonzero(mask > 127)
    height, width = mask.shape
    if rows.size == 0:
        side = max(height, width)
        return (height - side) // 2, (width - side) // 2, side
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = int(round(max(bottom - top, right - left) * (1 + 2 * MARGIN)))
    return int((top + bottom) // 2 - side // 2), int((left + right) // 2 - side // 2), max(side, 1)


def cut(image: np.ndarray, box: tuple[int, int, int], fill: int = 255) -> np.ndarray:
    """The square ``box`` of ``image`` [H, W, C], padded with ``fill`` outside the frame."""
    top, left, side = box
    out = np.full((side, side, image.shape[2]), fill, image.dtype)
    height, width = image.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return out


def paste(labels: np.ndarray, box: tuple[int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """The crop's labels [side, side] placed in a frame of background (0) of ``shape``."""
    top, left, side = box
    frame = np.zeros(shape, np.uint8)
    height, width = shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        frame[y0:y1, x0:x1] = labels[y0 - top:y1 - top, x0 - left:x1 - left]
    return frame


@torch.no_grad()
def parse_crops(network: torch.nn.Module, model: str, crops: torch.Tensor) -> torch.Tensor:
    """Labels [B, 512, 512] uint8 in CelebAMask-HQ order for crops [B, 3, 512, 512] in [0, 1]."""
    if model == "bisenet":
        mean = crops.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = crops.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        labels = network((crops - mean) / std)[0].argmax(1)
        return torch.as_tensor(BISENET_TO_CELEBAMASK, device=labels.device)[labels]
    return network(crops * 2 - 1)[0].argmax(1).to(torch.uint8)


def label_path(out_dir: Path, frames: SubjectFrames, i: int) -> Path:
    image = frames.resolve(frames.image_paths[i])
    return out_dir / image.parent.parent.name / f"{image.stem}_labels.png"


def parse_subject(union_dir: str | Path, out_dir: str | Path, network: torch.nn.Module, model: str,
                  device: torch.device, batch_size: int = 8, progress: bool = True) -> dict:
    """Parse every image of the subject's splits that has no label file yet. Returns counts."""
    union_dir, out_dir = Path(union_dir), Path(out_dir)
    todo, seen = [], set()
    for split in ("train", "val", "test"):
        frames = SubjectFrames(union_dir, split)
        for i in range(len(frames)):
            path = label_path(out_dir, frames, i)
            if path not in seen:
                seen.add(path)
                if not path.is_file():
                    todo.append((frames, i, path))
    for first in tqdm(range(0, len(todo), batch_size), desc="face parsing", unit="batch", disable=not progress):
        chunk = todo[first:first + batch_size]
        crops, boxes, shapes = [], [], []
        for frames, i, _ in chunk:
            width, height = (int(v) for v in frames.size_wh[i])
            image = read_png(frames.resolve(frames.image_paths[i]), "RGB", (width, height))
            mask = read_png(frames.resolve(frames.mask_paths[i]), "L", (width, height))
            box = crop_box(mask)
            crop = torch.from_numpy(cut(image, box)).permute(2, 0, 1).float().div_(255)
            crops.append(F.interpolate(crop[None], size=(CROP, CROP), mode="bilinear", align_corners=False,
                                       antialias=True)[0])
            boxes.append(box)
            shapes.append((height, width))
        labels = parse_crops(network, model, torch.stack(crops).to(device))
        for (frames, i, path), box, shape, crop_labels in zip(chunk, boxes, shapes, labels):
            side = box[2]
            resized = F.interpolate(crop_labels[None, None].float(), size=(side, side), mode="nearest")[0, 0]
            frame = paste(resized.to(torch.uint8).cpu().numpy(), box, shape)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
    return {"images": len(seen), "parsed": len(todo), "already_there": len(seen) - len(todo), "model": model}
