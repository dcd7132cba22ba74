"""Ingest of a real subject: check its UNION folder before any training and say what it holds.

``ingest_subject(union)`` reads every split with the reader's own checks, runs the layout
validator (every file the reader needs, the splits, the cameras, the FLAME parameter shapes)
and counts MeGA's extras (face parsing, depth maps) per image. It returns the inventory and
the list of problems, all of them, each naming the file and field; the images are not copied.
Every image and mask is opened to its header (an image PIL can read, of the size the JSON's
``w``, ``h`` give it: milliseconds each; a file shared by two splits, as the one-frame split's are
the train split's, once); a file truncated past its header is reported by the reader when
training decodes it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mega.data.gaussian_avatars import SubjectFrames
from mega.data.validate import validate_union
from mega.errors import MegaError

SPLITS = ("train", "val", "test", "onef")
EXTRAS = {"parsing": "{stem}_labels.png", "depths": "{stem}.npz"}
# Per split and kind of problem, how many images are named before the rest are counted.
IMAGES_NAMED = 3


def _about_the_whole_file(problem: str) -> bool:
    """Whether a layout problem says a whole split file is missing or unreadable (the reader says so too)."""
    what = problem.split(": ", 1)[1]
    return what == "missing" or what.startswith(("not readable JSON", "expected a JSON object"))


def _extras_present(frames: SubjectFrames) -> dict[str, int]:
    """Per extra folder, how many of the split's images have their file (parsing, depths)."""
    counts = dict.fromkeys(EXTRAS, 0)
    for i in range(len(frames)):
        image = frames.resolve(frames.image_paths[i])
        for folder, pattern in EXTRAS.items():
            counts[folder] += (image.parent.parent / folder / pattern.format(stem=image.stem)).is_file()
    return counts


def _image_problems(frames: SubjectFrames, checked: set[Path]) -> list[str]:
    """Images and masks of a split that are not images, or not of the size the JSON gives them.

    Only headers are read; files in ``checked`` are skipped, and the others added to it. Files
    that do not exist are the layout check's to report."""
    found: dict[str, list[str]] = {}
    for i in range(len(frames)):
        expected_wh = tuple(int(v) for v in frames.size_wh[i])
        for kind, relative in (("image", frames.image_paths[i]), ("mask", frames.mask_paths[i])):
            path = frames.resolve(relative)
            if path in checked:
                continue
            checked.add(path)
            try:
                with Image.open(path) as img:
                    size_wh = img.size
            except FileNotFoundError:
                continue
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
                found.setdefault(f"unreadable {kind}", []).append(
                    f"{path}: not a readable image ({type(e).__name__}: {e}); expected a PNG")
                continue
            if size_wh != expected_wh:
                found.setdefault(f"{kind} size", []).append(
                    f"{path}: {kind} is {size_wh[0]}x{size_wh[1]} (w x h), {frames.json_path.name} frame {i} says "
                    f"{expected_wh[0]}x{expected_wh[1]} (its 'w', 'h')")
    problems = []
    for kind, lines in found.items():
        problems += lines[:IMAGES_NAMED]
        if len(lines) > IMAGES_NAMED:
            problems.append(f"{frames.json_path}: {len(lines) - IMAGES_NAMED} more frames with the same "
                            f"problem ({kind}), {len(lines)} of {len(frames)} in all")
    return problems


def ingest_subject(union: str | Path) -> tuple[dict, list[str]]:
    """(inventory, problems) of a UNION folder. The inventory says per split how many frames,
    cameras and timesteps it has and how many images have parsing and depth; ``extras`` is
    ``all``, ``none`` or ``partial`` per extra over the whole subject."""
    union = Path(union)
    if not union.is_dir():
        what = "a file, expected the UNION folder" if union.exists() else "folder not found"
        return {"union": str(union)}, [f"{union}: {what} (subjects.<id>.union in config/config.yaml)"]
    inventory: dict = {"union": str(union.resolve()), "splits": {}}
    problems: list[str] = []
    totals = {"images": 0, **dict.fromkeys(EXTRAS, 0)}
    images_checked: set[Path] = set()
    for split in SPLITS:
        if split == "onef" and not (union / "transforms_onef.json").is_file():
            inventory["splits"]["onef"] = None
            continue
        try:
            frames = SubjectFrames(union, split)
        except MegaError as error:
            problems.append(str(error))
            continue
        present = _extras_present(frames)
        problems += _image_problems(frames, images_checked)
        inventory["splits"][split] = {
            "frames": len(frames), "cameras": sorted({int(c) for c in frames.camera_index}),
            "timesteps": len(set(frames.timestep.tolist())), "image_wh": [int(v) for v in frames.size_wh[0]],
            **{f"with_{k}": v for k, v in present.items()},
        }
        if split != "onef":
            totals["images"] += len(frames)
            for k in EXTRAS:
                totals[k] += present[k]
    try:
        layout = validate_union(union, extras=False)
        # A split file the reader already reported (missing, not JSON, no frames) is not listed twice.
        reported = {problem.split(": ", 1)[0] for problem in problems}
        problems += [p for p in layout if not (p.split(": ", 1)[0] in reported and _about_the_whole_file(p))]
    except Exception as error:  # noqa: BLE001 - a corrupt file stops the check; say where, keep the rest
        problems.append(f"{union}: the layout check stopped at {type(error).__name__}: {error}")
    inventory["images"] = totals["images"]
    inventory["extras"] = {k: ("none" if totals[k] == 0 else "all" if totals[k] == totals["images"] else "partial")
                           for k in EXTRAS}
    for k in EXTRAS:
        if inventory["extras"][k] == "partial":
            problems.append(f"{union}: {totals[k]} of {totals['images']} images have {k}/ files; a subject has them "
                            f"for every image or for none (make them with the preprocessing rules)")
    if inventory["splits"].get("onef") is None:
        inventory["notes"] = ["no transforms_onef.json: the canonical-hair stage needs the one-frame split"]
    inventory["problems"] = problems
    # The reader validates each split again when training opens it; this is the early, complete report.
    return inventory, list(dict.fromkeys(problems))
