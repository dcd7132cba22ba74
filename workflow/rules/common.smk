import json
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

HEAD_MODEL_DIR = "results/head_model"

# The interpreter that runs Snakemake has mega installed (make setup); jobs use it too, also on
# SLURM nodes. Under --sdm conda the rule's own environment provides python.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    MEGA = "python -m mega"
else:
    MEGA = f"{sys.executable} -m mega"


wildcard_constraints:
    subject=r"[A-Za-z0-9_\-]+",
    variant=r"mega|noview|nodyn|nosubdiv|nodisp|gsdepth|allgs",


def real_subjects():
    """Subjects with a UNION folder given in the config."""
    return [name for name, entry in config["subjects"].items() if entry.get("union")]


def union_dir(wildcards):
    return config["subjects"][wildcards.subject]["union"]


def head_model_args():
    """Command-line arguments of `mega head-model` from the config's head_model section."""
    hm = config["head_model"]
    if hm["source"] == "toy":
        return "--source toy"
    flame = hm["flame"]
    return (
        f"--source flame --model {flame['model']} --masks {flame['masks']} "
        f"--template {flame['template']}"
    )


def parent_dir(wildcards, output):
    return str(Path(output[0]).parent)


SYNTHETIC = "synthetic"


def synth_args():
    """Command-line options of `mega synth` from the config's synthetic and head_model sections."""
    s = config.get("synthetic", {})
    return (
        f"--seed {s.get('seed', 0)} --width {s.get('width', 138)} --height {s.get('height', 200)} "
        f"--frames {s.get('frames_per_sequence', 3)} --hair {s.get('hairstyle', 'short')} "
        f"--supersample {s.get('supersample', 2)} {head_model_args()}"
    )


def subject_union(wildcards):
    """The UNION folder of a subject: the synthetic one's, or the config's."""
    if wildcards.subject == SYNTHETIC:
        return f"results/data/{SYNTHETIC}/UNION10_{SYNTHETIC}_v16_synthetic"
    return config["subjects"][wildcards.subject]["union"]


def face_settings(wildcards):
    """Face settings as JSON: the config's face section, then the subject's own overrides."""
    settings = dict(config.get("face", {}))
    if wildcards.subject == SYNTHETIC:
        settings.update(config.get("synthetic", {}).get("face", {}))
    else:
        settings.update(config["subjects"][wildcards.subject].get("face", {}))
    settings.setdefault("backend", config.get("backend", "auto"))
    return json.dumps(settings, separators=(",", ":"))


def hair_settings(wildcards):
    """Hair settings as JSON: the config's hair section, then the subject's own overrides."""
    settings = dict(config.get("hair", {}))
    if wildcards.subject == SYNTHETIC:
        settings.update(config.get("synthetic", {}).get("hair", {}))
    else:
        settings.update(config["subjects"][wildcards.subject].get("hair", {}))
    return json.dumps(settings, separators=(",", ":"))


# The blending variants change nothing in the face: they reuse the full model's.
BLEND_VARIANTS = ("gsdepth", "allgs")


def face_of(wildcards):
    variant = "mega" if wildcards.variant in BLEND_VARIANTS else wildcards.variant
    return f"results/train/{wildcards.subject}/{variant}/face.pt"


def default_targets():
    targets = [f"{HEAD_MODEL_DIR}/summary.json", f"{HEAD_MODEL_DIR}/preview.png"]
    if config.get("synthetic", {}).get("enabled", True):
        targets += [
            f"results/data/{SYNTHETIC}/summary.json",
            f"results/data/{SYNTHETIC}/contact_sheet.png",
            f"results/train/{SYNTHETIC}/mega/face/metrics.json",
            f"results/train/{SYNTHETIC}/mega/joint/metrics.json",
            f"results/export/{SYNTHETIC}/mega/hair_canonical.ply",
            f"results/export/{SYNTHETIC}/mega/face.obj",
        ]
    targets += expand("results/data/{subject}/summary.json", subject=real_subjects())
    return targets
