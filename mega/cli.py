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
