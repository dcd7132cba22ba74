"""The ``mega`` command: one subcommand per workflow step. Workflow rules call only these."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mega.errors import MegaError

log = logging.getLogger("mega")


def _head_model(args) -> None:
    import torch

    from mega.atomic import write_json
    from mega.flame import EXPRESSIONS, FlameModel, enhance, subdivide, write_head_model
    from mega.flame.head_model import REGION_NAMES
    from mega.flame.sources import head_model_from_source
    from mega.report.head_model_figure import write_head_model_figure

    out = Path(args.out)
    head = head_model_from_source(args.source, args.model, args.masks, args.template)
    if args.source == "toy":
        paths = write_head_model(out, head)
        log.info("wrote the procedural head model: %s", ", ".join(str(p) for p in paths.values()))
    subdivided = subdivide(head)
    enhanced = enhance(head)
    labels = enhanced.region_labels()

    def counts(h):
        return {"vertices": h.n_vertices, "faces": h.n_faces, "uvs": int(h.uvs.shape[0])}

    summary = {
        "source": args.source,
        "base": counts(head),
        "subdivided": counts(subdivided),
        "enhanced": counts(enhanced),
        "enhanced_region_vertices": {name: int((labels == i).sum()) for i, name in enumerate(REGION_NAMES)},
        "paper_enhanced_flame2023": {"vertices": 16428, "faces": 40212},
    }
    model = FlameModel(enhanced)
    posed = {"neutral": enhanced.v_template}
    with torch.no_grad():
        for name, k in EXPRESSIONS.items():
            expr = torch.zeros(1, model.n_expr)
            expr[0, k] = 1.0 if name == "eyes_close" else 2.0
            posed[f"expr {name}"] = model(expr=expr)[0].numpy()
        posed["jaw_pose 0.3 rad"] = model(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))[0].numpy()
        shape = torch.zeros(1, model.n_shape)
        shape[0, :4] = torch.tensor([2.0, -2.0, 2.0, -2.0])
        posed["shape ±2"] = model(shape=shape)[0].numpy()
    write_head_model_figure(out / "preview.png", enhanced, posed, f"head model: {args.source}")
    write_json(out / "summary.json", summary)
    log.info("enhanced mesh: %d vertices, %d faces", enhanced.n_vertices, enhanced.n_faces)


def _inspect_subject(args) -> None:
    from mega.atomic import write_json
    from mega.data.gaussian_avatars import SubjectDataset

    summary = {"union": str(Path(args.union).resolve()), "splits": {}}
    for split in args.splits:
        path = Path(args.union) / f"transforms_{split}.json"
        if not path.exists():
            continue
        ds = SubjectDataset(args.union, split)
        sample = ds[0]
        summary["splits"][split] = {
            "frames": len(ds),
            "cameras": sorted({int(c) for c in ds.frames.camera_index}),
            "timesteps": int(len(set(ds.frames.timestep.tolist()))),
            "image_hw": list(sample["image"].shape[1:]),
            "parsing": ds.has_parsing,
            "depth": ds.has_depth,
        }
        log.info("%s: %d frames", split, len(ds))
    write_json(args.out, summary)


def _synth(args) -> None:
    import time

    from mega.atomic import write_json
    from mega.data.synth import SynthOptions, options_summary, synthesize
    from mega.data.validate import validate_union
    from mega.errors import DataError
    from mega.flame.sources import head_model_from_source
    from mega.report.subject_figure import write_contact_sheet

    options = SynthOptions(seed=args.seed, width=args.width, height=args.height, n_cameras=args.cameras,
                           n_sequences=args.sequences, frames_per_sequence=args.frames, hair=args.hair,
                           supersample=args.supersample, subject=args.subject)
    if options.n_sequences < 2 or options.frames_per_sequence < 1 or options.n_cameras <= 8:
        raise MegaError("mega synth needs at least 2 sequences, 1 frame per sequence and 9 cameras "
                        "(camera 8 is the val camera)")
    out = Path(args.out)
    head = head_model_from_source(args.source, args.model, args.masks, args.template)
    started = time.perf_counter()
    union = synthesize(out, head, options, progress=not args.quiet)
    seconds = time.perf_counter() - started
    problems = validate_union(union)
    if problems:
        raise DataError(f"the synthesized subject fails validation: {problems[0]} (and {len(problems) - 1} more)")
    sheet = write_contact_sheet(union, out / "contact_sheet.png")
    n_images = options.n_sequences * options.frames_per_sequence * options.n_cameras
    write_json(out / "summary.json", {
        "union": union.name, "options": options_summary(options), "images": n_images,
        "seconds": round(seconds, 1), "contact_sheet": sheet.name, "head_model": args.source,
    })
    log.info("wrote %d images in %.1f s: %s", n_images, seconds, union)


def _train_face(args) -> None:
    import json

    import torch

    from mega.errors import ConfigError
    from mega.face.config import FaceConfig, variant_config
    from mega.flame.head_model import load_head_model_folder
    from mega.train.face import train_face

    try:
        settings = json.loads(args.settings) if args.settings else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--settings is not valid JSON ({e}): {args.settings!r}") from e
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    config = variant_config(FaceConfig.from_dict(settings, where="--settings"), args.variant)
    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    head = load_head_model_folder(args.head_model)
    metrics = train_face(args.union, head, args.out, config, variant=args.variant, device=args.device,
                         progress=not args.quiet, restart=args.restart, on_settings_change=args.on_settings_change)
    for split in ("val", "val_refined", "test"):
        if split in metrics:
            log.info("%s: %s", split, ", ".join(f"{k} {v}" for k, v in metrics[split].items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mega", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("head-model", help="write the procedural head model (or check licensed FLAME files), "
                                          "the enhanced mesh's counts and a preview figure")
    p.add_argument("--source", choices=("toy", "flame"), default="toy")
    p.add_argument("--model", help="FLAME model pickle (flame2023.pkl), with --source flame")
    p.add_argument("--masks", help="FLAME masks pickle (FLAME_masks.pkl), with --source flame")
    p.add_argument("--template", help="template OBJ with UVs (head_template_mesh.obj), with --source flame")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_head_model)

    p = sub.add_parser("inspect-subject", help="read every split of a subject and summarise it as JSON")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--out", required=True, help="summary JSON to write")
    p.set_defaults(func=_inspect_subject)

    p = sub.add_parser("synth", help="write the synthetic subject (GaussianAvatars layout with MeGA's extras) "
                                     "and its contact sheet")
    p.add_argument("out", help="folder for the sequence folders, the UNION folder, summary.json and the sheet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=138, help="image width in pixels (real data: 550)")
    p.add_argument("--height", type=int, default=200, help="image height in pixels (real data: 802)")
    p.add_argument("--cameras", type=int, default=16)
    p.add_argument("--sequences", type=int, default=10, help="the last one is the test sequence")
    p.add_argument("--frames", type=int, default=3, help="frames per sequence")
    p.add_argument("--hair", choices=("short", "long", "none"), default="short")
    p.add_argument("--supersample", type=int, default=2, help="ground truth is rendered this much larger, then "
                                                              "box-filtered down")
    p.add_argument("--subject", default="synthetic", help="subject id in the folder names")
    p.add_argument("--source", choices=("toy", "flame"), default="toy", help="head model, as for head-model")
    p.add_argument("--model")
    p.add_argument("--masks")
    p.add_argument("--template")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    p = sub.add_parser("train-face", help="stage 1: train the neural mesh face of a subject (resumes if interrupted)")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--out", required=True, help="run folder: face.pt, and face/ with the checkpoint, loss log, "
                                                "metrics and renders")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--variant", default="mega", help="mega (full) or a Table 2 ablation: noview, nodyn, "
                   "nosubdiv, nodisp")
    p.add_argument("--settings", help="face settings as JSON, e.g. '{\"tex_size\": 128}' (see mega/face/config.py)")
    p.add_argument("--iterations", type=int, help="a fixed number of steps (overrides the settings' epochs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--on-settings-change", choices=("fail", "restart"), default="fail",
                   help="a checkpoint written with other settings: stop and say what differs (fail), or "
                        "discard it and start over (restart; the workflow's choice)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_face)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        args.func(args)
    except MegaError as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"mega {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
