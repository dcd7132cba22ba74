"""The whole avatar with the ground truth's own strands as its canonical hair: what the hair's
representation, the blend, the joint stage and the evaluation reach on a synthetic subject when
the canonical-hair stage's reconstruction is perfect, against the avatar the stage trained.

    python benchmarks/hair_oracle.py --subject synthetic_long \\
        --source results/benchmarks/avatar_variants/synthetic_long/seed42/steps1515 \\
        --variant 'oracle={}' --variant 'oracle_ss2={"hair": {"hair_supersample": 2}}' \\
        --variant 'jitter05={"oracle": {"jitter_mm": 0.5}}'

The synthetic subject's strands (``mega.data.synth.build_hair``: Gaussians with constant colours)
are posed at the canonical timestep exactly as ``mega synth`` posed them, and written as the
canonical hair of a copy of ``--source``'s hair checkpoint (RGB as the degree-0 coefficient, the
higher ones 0). The script first re-renders one training view of the canonical frame with the
subject's own renderer from those Gaussians and checks it against the stored image, so that the
strands are the ones the images were made of. A variant's ``oracle.jitter_mm`` moves every
Gaussian by an isotropic normal offset of that standard deviation (mm; seeded by ``--seed``): how
precisely a reconstruction has to place the strands. Each variant then trains the joint stage from that
hair and ``--source``'s face with the synthetic settings (`synthetic.hair` of config/config.yaml
and the variant's overrides), one thread a job, and is evaluated on val (novel view) and test
(novel expression) as the workflow does (``benchmarks/avatar_variants.py``'s steps), in
results/benchmarks/hair_oracle/<subject>/<variant>/. ``--source`` is an avatar of
``benchmarks/avatar_variants.py`` (face.pt, hair.pt and eval/ in one folder); ``--template`` a
hair.pt of another avatar when ``--source`` has none. Runs are keyed by the variant's name: a
finished one is not run again, so give changed overrides a new name.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from avatar_variants import COLUMNS, run_avatar
from mega.data.gaussian_avatars import SubjectDataset
from mega.data.synth import SynthOptions, SynthScene, synthesized_union, synthetic_scene
from mega.flame.sources import head_model_from_source
from mega.hair.model import GaussianHair
from mega.render.sh import rgb_to_sh_dc
from named_overrides import parse_named_overrides

def canonical_strands(results: Path, subject: str):
    """(scene, the first frame, its state, means [N, 3], quats [N, 4]): the subject's strands posed at
    global timestep 0 (the one-frame split's) by ``mega.data.synth``'s own scene."""
    summary = json.loads((results / "data" / subject / "summary.json").read_text())
    fields = SynthOptions.__dataclass_fields__
    options = SynthOptions(**{k: v for k, v in summary["options"].items() if k in fields})
    if summary.get("head_model", "toy") != "toy":
        raise SystemExit(f"{subject}: made with head model {summary['head_model']!r}; this script rebuilds 'toy'")
    scene = synthetic_scene(head_model_from_source("toy"), options)
    if scene.hair is None:
        raise SystemExit(f"{subject} has no hair")
    frame = scene.params[next(iter(scene.params))][0]
    with torch.no_grad():
        state = scene.frame(frame, 0)
    means, quats, _ = state[2]
    return scene, frame, state, means, quats


def check_against_the_images(union: Path, scene: SynthScene, frame: dict, state) -> float:
    """PSNR (dB) of one canonical-frame training view re-rendered from the strands against its image."""
    onef = SubjectDataset(union, "onef", parsing="off", depth="off")
    with torch.no_grad():
        image, *_ = scene.render(onef.camera(0), frame, state)
    stored = np.asarray(Image.open(onef.image_path(0)).convert("RGB"), dtype=np.float64) / 255
    rendered = np.round(image.numpy().astype(np.float64) * 255) / 255
    mse = float(np.mean((rendered - stored) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


def write_oracle_hair(source_hair: Path, out: Path, hair, means, quats, jitter_mm: float = 0.0, seed: int = 0) -> int:
    """``source_hair``'s checkpoint with the strands as its canonical hair (each Gaussian moved by
    N(0, ``jitter_mm``²) per axis); the Gaussians' number."""
    checkpoint = torch.load(source_hair, map_location="cpu", weights_only=False)
    if checkpoint.get("canonical_timestep") != 0:
        raise SystemExit(f"{source_hair}: its canonical timestep is {checkpoint.get('canonical_timestep')}; "
                         "the strands are posed at timestep 0")
    if jitter_mm > 0:
        noise = torch.randn(means.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        means = means + (noise * jitter_mm / 1000).to(means.dtype)
    template = GaussianHair(0, checkpoint["hair_config"]["sh_degree"])
    template.load_state_dict(checkpoint["hair"])
    oracle = GaussianHair(means.shape[0], template.sh_degree)
    opacity = hair.opacities.clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():  # the raw parameters GaussianHair.activated() turns into these
        oracle.params["means"].copy_(means)
        oracle.params["quats"].copy_(quats)
        oracle.params["scales"].copy_(torch.log(hair.scales))
        oracle.params["opacities"].copy_(torch.log(opacity / (1 - opacity)))
        oracle.params["sh0"].copy_(rgb_to_sh_dc(hair.colors)[:, None])
        oracle.active_degree.copy_(template.active_degree)
    checkpoint["hair"] = oracle.state_dict()
    torch.save(checkpoint, out)
    return oracle.n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="synthetic_long")
    parser.add_argument("--source", required=True, help="an avatar's folder: its face.pt, hair.pt and eval/")
    parser.add_argument("--template", help="a hair.pt whose settings the oracle's checkpoint keeps "
                                           "(default: --source's; any avatar of the same settings will do)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=JSON: 'hair' overrides of the synthetic hair settings for the joint stage, "
                             "'oracle': {'jitter_mm': σ}")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--lpips-weights", default=".cache/mega/lpips_alex.pth")
    parser.add_argument("--no-train", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args()
    results, source = Path(args.results), Path(args.source)
    variants = dict(parse_named_overrides(v, "--variant", {"hair", "oracle"}) for v in (args.variant or ["oracle={}"]))
    config = yaml.safe_load(Path(args.config).read_text())
    lpips_weights = args.lpips_weights if Path(args.lpips_weights).is_file() else None
    union = synthesized_union(results / "data" / args.subject)

    scene, frame, state, means, quats = canonical_strands(results, args.subject)
    hair = scene.hair
    psnr = check_against_the_images(union, scene, frame, state)
    print(f"{args.subject}: {means.shape[0]} strand Gaussians; one canonical-frame view re-rendered from them "
          f"against its image: {psnr:.1f} dB", flush=True)
    if psnr < 40:
        raise SystemExit("the strands do not reproduce the subject's images: not the subject's hair")

    root = results / "benchmarks" / "hair_oracle" / args.subject
    jobs = []
    for name, overrides in variants.items():
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "face.pt").is_file():
            shutil.copy2(source / "face.pt", out / "face.pt")
        if not (out / "hair.pt").is_file():
            write_oracle_hair(Path(args.template or source / "hair.pt"), out / "hair.pt", hair, means, quats,
                              overrides.get("oracle", {}).get("jitter_mm", 0.0), args.seed)
        jobs.append((name, overrides, out))
    if not args.no_train:
        with ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(run_avatar, args.subject, args.seed, overrides, out, results, config,
                                     lpips_weights) for _, overrides, out in jobs]:
                done.result()

    rows = [("trained hair (--source)", source)] + [(name, out) for name, _, out in jobs]
    # The object mask alone beside Table 1's PSNR: the two weigh translucent hair differently.
    columns = {**COLUMNS, "NV object": ("val", "psnr_object")}
    print("\n| avatar | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, folder in rows:
        metrics = {split: json.loads(p.read_text()) if (p := folder / "eval" / split / "metrics.json").is_file()
                   else {} for split in ("val", "test")}
        cells = [metrics[split].get(key) for split, key in columns.values()]
        print(f"| {name} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
