import json
import re
import sys
from pathlib import Path

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from mega.ablations import load_ablations
from mega.data.overlay import has_extra

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as error:
    # Snakemake's own message prints the whole schema (hundreds of lines) before the key it
    # is about: say the key, what is wrong and the keys allowed there in one line instead.
    cause = error.__context__
    if not isinstance(cause, jsonschema.ValidationError):
        raise
    where = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
    known = cause.schema.get("properties") if cause.validator == "additionalProperties" else None
    raise ValueError(
        f"config {where}: {cause.message}"
        + (f" (known: {', '.join(known)})" if known else "")
        + " (workflow/schemas/config.schema.yaml)"
    ) from None


HEAD_MODEL_DIR = "results/head_model"

# The interpreter that runs Snakemake has mega installed (make setup); jobs use it too, also on
# SLURM nodes. Under --sdm conda the rule's own environment provides python.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    MEGA = "python -m mega"
else:
    MEGA = f"{sys.executable} -m mega"


# Table 2's variants: named overrides of the face and hair settings.
ABLATIONS_FILE = str(Path(workflow.basedir) / "config" / "ablations.yaml")
ABLATIONS = load_ablations(ABLATIONS_FILE)


wildcard_constraints:
    subject=r"[A-Za-z0-9_\-]+",
    variant="|".join(ABLATIONS),
    split=r"val|test",


def real_subjects():
    """Subjects with a UNION folder given in the config."""
    return [name for name, entry in config["subjects"].items() if entry.get("union")]


def union_dir(wildcards):
    """The subject's UNION folder, checked when a job needs it (a dry run of other targets does
    not), so that a wrong path is reported under its config key rather than as a missing file."""
    union = config["subjects"][wildcards.subject]["union"]
    if not Path(union).is_dir():
        what = "a file, not a folder" if Path(union).exists() else "missing"
        raise WorkflowError(
            f"config subjects.{wildcards.subject}.union: {union} is {what}; expected the subject's "
            "GaussianAvatars UNION folder (transforms_*.json beside the sequences' folders), "
            "on a path this machine sees"
        )
    return union


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
# More synthetic subjects (for editing, and for trying the method on other heads): the first
# one's size and training settings, their own seed, hairstyle and camera count.
OTHER_SYNTHETIC = config.get("synthetic", {}).get("others", {})
SYNTHETIC_SUBJECTS = [SYNTHETIC, *OTHER_SYNTHETIC]


def is_synthetic(subject):
    return subject in SYNTHETIC_SUBJECTS


def check_config_ids():
    """The names the config gives subjects (subjects, synthetic.others) and paintings name
    folders and wildcard values: strings of letters, digits, _ and -, and a real subject's not a
    synthetic one's. Otherwise YAML's unquoted 306 (a number) stops the parse with a TypeError, a
    name with a space or a dot surfaces as a missing file, and a real subject named like a
    synthetic one is silently replaced by it."""
    synthetic = config.get("synthetic", {})
    for section, names in (
        ("subjects", config["subjects"]),
        ("synthetic.others", synthetic.get("others", {})),
        ("edits.paint", config.get("edits", {}).get("paint", {})),
    ):
        for name in names:
            if not isinstance(name, str):
                raise ValueError(
                    f"config {section}: the name {name!r} is not a string (YAML read it as "
                    f'{type(name).__name__}): quote it ("{name}": ...)'
                )
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
                raise ValueError(
                    f"config {section}: the name '{name}' may hold only letters, digits, _ and - "
                    f"(it names folders and wildcard values)"
                )
    if SYNTHETIC in OTHER_SYNTHETIC:
        raise ValueError(
            f"config synthetic.others: '{SYNTHETIC}' is the default synthetic subject's name; "
            "give the other subject another name"
        )
    clash = sorted(set(config["subjects"]) & set(SYNTHETIC_SUBJECTS))
    if clash:
        raise ValueError(
            f"config subjects: '{clash[0]}' is also a synthetic subject's name (synthetic, "
            f"synthetic.others); give the real subject another id"
        )


check_config_ids()


def synth_args(wildcards):
    """Command-line options of `mega synth` from the config's synthetic and head_model sections."""
    s = config.get("synthetic", {})
    own = {**s, **OTHER_SYNTHETIC.get(wildcards.subject, {})}
    # Named only when not the default, so that subjects made before the options are not remade.
    hair_options = {
        "hair_render": "classic",
        "hair_clumps": 0,
        "hair_strands": 2500,
        "hair_sway_mm": 4.0,
    }
    hair_args = "".join(
        f" --{key.replace('_', '-')} {own[key]}"
        for key, default in hair_options.items()
        if own.get(key, default) != default
    )
    return (
        f"--seed {own.get('seed', 0)} --width {s.get('width', 138)} --height {s.get('height', 200)} "
        f"--frames {s.get('frames_per_sequence', 3)} --hair {own.get('hairstyle', 'short')} "
        f"--cameras {own.get('cameras', 16)} "
        f"--supersample {s.get('supersample', 2)} {head_model_args()}{hair_args}"
    )


# What a job asks for when a rule or key is missing from config["resources"].
RESOURCE_DEFAULTS = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}


def _resource(rule_name, key, wildcards, attempt):
    """The config's `key` for rule_name's job: from resources.synthetic for a synthetic subject
    (the `subject` wildcard, or `a`, the face of a swap), from resources.real otherwise and for
    rules without a subject. Memory grows with each attempt, so that a retry after running out
    of memory asks for more."""
    subject = wildcards.get("subject", wildcards.get("a"))
    scale = "synthetic" if is_synthetic(subject) else "real"
    table = config.get("resources", {}).get(scale, {}).get(rule_name, {})
    value = table.get(key, RESOURCE_DEFAULTS[key])
    return value * attempt if key == "mem_mb" else value


def job_threads(rule_name):
    """A `threads:` callable reading config["resources"] (see _resource)."""
    return lambda wildcards, attempt: _resource(rule_name, "threads", wildcards, attempt)


def job_resource(rule_name, key):
    """A `resources:` callable reading config["resources"] (see _resource)."""
    return lambda wildcards, attempt: _resource(rule_name, key, wildcards, attempt)


def check_resource_rules():
    """Each name under config["resources"] is one of the workflow's rules; a misspelt name would
    silently leave its jobs asking for the defaults."""
    known = {rule.name for rule in workflow.rules}
    for scale, table in config.get("resources", {}).items():
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(
                f"config resources.{scale}: unknown rule(s) {', '.join(unknown)}; "
                f"rules are: {', '.join(sorted(known))}"
            )


PREPROCESS = config.get("preprocess", {})


def subject_union(wildcards):
    """The UNION folder training reads: the synthetic one's, or a real subject's overlay (its
    own folder with the preprocessing outputs in place; rule prepare_subject)."""
    return union_of(wildcards.subject)


def union_of(subject):
    """subject_union of a subject by name."""
    if is_synthetic(subject):
        return f"results/data/{subject}/UNION10_{subject}_v16_synthetic"
    name = Path(config["subjects"][subject]["union"]).name
    return f"results/preprocess/{subject}/union/{name}"


def subject_ready(wildcards):
    """The file that says a subject can be trained: the synthetic summary, or the overlay's."""
    return subject_ready_of(wildcards.subject)


def needs_parsing(subject):
    """A real subject whose sequence folders have no parsing/: rule parse_faces makes it."""
    return not has_extra(config["subjects"][subject]["union"], "parsing")


def imports_depth(subject):
    """A real subject without depths/ whose config names a Metashape export: rule import_depth
    converts it. Without either, the subject trains with the depth and normal losses off."""
    entry = config["subjects"][subject]
    return bool(entry.get("metashape")) and not has_extra(entry["union"], "depths")


def overlay_inputs(wildcards):
    inputs = {"inventory": f"results/data/{wildcards.subject}/inventory.json"}
    if needs_parsing(wildcards.subject):
        inputs["parsing"] = f"results/preprocess/{wildcards.subject}/parsing/summary.json"
    if imports_depth(wildcards.subject):
        inputs["depths"] = f"results/preprocess/{wildcards.subject}/depths/summary.json"
    return inputs


def overlay_args(wildcards, input):
    args = []
    if "parsing" in input.keys():
        args.append(f"--parsing {Path(input.parsing).parent}")
    if "depths" in input.keys():
        args.append(f"--depths {Path(input.depths).parent}")
    timestep = PREPROCESS.get("onef_timestep")
    if timestep is not None:
        args.append(f"--onef-timestep {timestep}")
    return " ".join(args)


def face_settings(wildcards):
    """Face settings as JSON: the config's face section, then the subject's own overrides."""
    settings = dict(config.get("face", {}))
    if is_synthetic(wildcards.subject):
        settings.update(config.get("synthetic", {}).get("face", {}))
    else:
        settings.update(config["subjects"][wildcards.subject].get("face", {}))
    settings.setdefault("backend", config.get("backend", "auto"))
    settings.update(ABLATIONS[wildcards.variant].face)
    return json.dumps(settings, separators=(",", ":"))


def hair_settings(wildcards):
    """Hair settings as JSON: the config's hair section, then the subject's own overrides."""
    settings = dict(config.get("hair", {}))
    if is_synthetic(wildcards.subject):
        settings.update(config.get("synthetic", {}).get("hair", {}))
    else:
        settings.update(config["subjects"][wildcards.subject].get("hair", {}))
    settings.update(ABLATIONS[wildcards.variant].hair)
    return json.dumps(settings, separators=(",", ":"))


def gaussianavatars_settings(wildcards):
    """GaussianAvatars settings as JSON: the config's section, then the subject's own overrides
    (the synthetic subjects': synthetic.gaussianavatars)."""
    settings = dict(config.get("gaussianavatars", {}))
    if is_synthetic(wildcards.subject):
        settings.update(config.get("synthetic", {}).get("gaussianavatars", {}))
    else:
        settings.update(config["subjects"][wildcards.subject].get("gaussianavatars", {}))
    return json.dumps(settings, separators=(",", ":"))


def face_of(wildcards):
    """A variant without face overrides (the blending ones) reuses the full model's face."""
    shared = ABLATIONS[wildcards.variant].shares_full_face
    variant = "mega" if shared else wildcards.variant
    return f"results/train/{wildcards.subject}/{variant}/face.pt"


def default_targets():
    targets = [f"{HEAD_MODEL_DIR}/summary.json", f"{HEAD_MODEL_DIR}/preview.png"]
    if config.get("synthetic", {}).get("enabled", True):
        targets += [
            f"results/data/{SYNTHETIC}/summary.json",
            f"results/data/{SYNTHETIC}/contact_sheet.png",
            f"results/export/{SYNTHETIC}/mega/hair_canonical.ply",
            f"results/export/{SYNTHETIC}/mega/face.obj",
        ]
    targets += expand("results/data/{subject}/summary.json", subject=real_subjects())
    return targets


# Evaluation, tables and videos (workflow/rules/evaluate.smk).
EVALUATION = config.get("evaluation", {})
TABLES = config.get("tables", {})
VIDEOS = config.get("videos", {})
LPIPS_WEIGHTS = EVALUATION.get("lpips_weights", ".cache/mega/lpips_alex.pth")
ABLATION_SUBJECT = TABLES.get("ablation_subject", SYNTHETIC)
# Measured baselines beside MeGA in Table 1 (docs/baselines.md).
TABLE1_BASELINES = TABLES.get("table1_baselines", [])
TABLE2_VARIANTS = TABLES.get(
    "table2_variants", ["mega", "noview", "nodyn", "nosubdiv", "nodisp", "gsdepth", "allgs"]
)


def table1_subjects():
    """Table 1's subjects: the config's list, else every real subject and the synthetic one."""
    if TABLES.get("table1_subjects"):
        return TABLES["table1_subjects"]
    synthetic = [SYNTHETIC] if config.get("synthetic", {}).get("enabled", True) else []
    return real_subjects() + synthetic


def avatar_inputs(wildcards):
    """A trained avatar's files (the subject and variant wildcards)."""
    return avatar_files(wildcards.subject, wildcards.variant)


def avatar_files(subject, variant):
    """The files of a subject's trained avatar: joint.pt, hair.pt, its rigid table, the head model."""
    run = f"results/train/{subject}/{variant}"
    return {
        "joint": f"{run}/joint.pt",
        "hair": f"{run}/hair.pt",
        "rigid": f"results/preprocess/{subject}/hair_rigid.npz",
        "head_model": f"{HEAD_MODEL_DIR}/summary.json",
    }


# Edits of trained avatars (workflow/rules/edit.smk): pairs of [face, hair] subjects to swap.
EDITS = config.get("edits", {})
SUBJECT_NAMES = "|".join(sorted({*SYNTHETIC_SUBJECTS, *config["subjects"]}, key=len, reverse=True))


def swap_inputs(wildcards):
    """The two full models (a's face, b's hair), a's rigid table, b's subject and the head model."""
    face, hair = avatar_files(wildcards.a, "mega"), avatar_files(wildcards.b, "mega")
    return {
        "face_joint": face["joint"],
        "face_hair": face["hair"],
        "face_rigid": face["rigid"],
        "hair_joint": hair["joint"],
        "hair_hair": hair["hair"],
        "hair_subject": subject_ready_of(wildcards.b),
        "head_model": face["head_model"],
    }


def subject_ready_of(subject):
    """subject_ready of a subject by name."""
    if is_synthetic(subject):
        return f"results/data/{subject}/summary.json"
    return f"results/preprocess/{subject}/union/overlay.json"


def avatar_inputs_mega(wildcards):
    """avatar_inputs of a subject's full model."""
    return avatar_files(wildcards.subject, "mega")


def paint_entry(wildcards):
    entry = EDITS.get("paint", {}).get(wildcards.name)
    if entry is None or entry["subject"] != wildcards.subject:
        raise ValueError(
            f"config edits.paint has no painting '{wildcards.name}' of subject '{wildcards.subject}'"
        )
    return entry


def paint_inputs(wildcards):
    """The full model, and the painting: the config's files, or the subject's example."""
    entry = paint_entry(wildcards)
    inputs = avatar_inputs_mega(wildcards)
    if entry.get("image"):
        inputs.update(image=entry["image"], mask=entry["mask"], view=entry["view"])
    else:
        folder = f"results/edits/paint/{wildcards.subject}/example_painting"
        inputs.update(
            image=f"{folder}/painted.png", mask=f"{folder}/mask.png", view=f"{folder}/view.json"
        )
    return inputs


def paint_settings(wildcards):
    """Paint settings as JSON: edits.paint_settings, then the synthetic subjects' own."""
    settings = dict(EDITS.get("paint_settings", {}))
    if is_synthetic(wildcards.subject):
        settings.update(config.get("synthetic", {}).get("paint", {}))
    settings.update(paint_entry(wildcards).get("settings", {}))
    return json.dumps(settings, separators=(",", ":"))


def check_config_names():
    """Every subject and variant the config names is one the workflow knows (the schema checks
    the baselines' names): a misspelt name would otherwise surface as a traceback, or as a
    missing file that does not say which key named it."""
    known = {*SYNTHETIC_SUBJECTS, *config["subjects"]}
    named = [("tables.table1_subjects", s) for s in TABLES.get("table1_subjects") or []]
    named.append(("tables.ablation_subject", ABLATION_SUBJECT))
    for i, pair in enumerate(EDITS.get("hairswap", [])):
        named += [(f"edits.hairswap[{i}]", subject) for subject in pair]
    named += [
        (f"edits.paint.{n}.subject", e.get("subject")) for n, e in EDITS.get("paint", {}).items()
    ]
    for key, subject in named:
        if subject not in known:
            raise ValueError(
                f"config {key}: unknown subject '{subject}'; the subjects are "
                f"{', '.join(sorted(known))} (subjects: in the config, synthetic, synthetic.others)"
            )
    unknown = [v for v in TABLE2_VARIANTS if v not in ABLATIONS]
    if unknown:
        raise ValueError(
            f"config tables.table2_variants: unknown variant(s) {', '.join(unknown)}; "
            f"{ABLATIONS_FILE} defines {', '.join(ABLATIONS)}"
        )


def check_stage_settings():
    """The face, hair and GaussianAvatars settings every subject trains with, and the paintings',
    read as the jobs will read them: a misspelt key, a wrong type or a value out of range stops
    the workflow here, naming the config sections, rather than in a job after the ones before it
    have run."""
    from types import SimpleNamespace

    from mega.edit.paint_config import PaintConfig
    from mega.face.config import FaceConfig
    from mega.gaussianavatars.config import GaussianAvatarsConfig
    from mega.hair.config import HairConfig

    # Each section alone as well: a value every present subject overrides (the synthetic
    # settings do most) would otherwise wait, unreported, for the first subject that does not.
    for section, kind in (
        ("face", FaceConfig),
        ("hair", HairConfig),
        ("gaussianavatars", GaussianAvatarsConfig),
    ):
        alone = dict(config.get(section, {}))
        if section == "face":
            alone.setdefault("backend", config.get("backend", "auto"))
        kind.from_dict(alone, where=f"config {section}")
    for subject in [*SYNTHETIC_SUBJECTS, *config["subjects"]]:
        own = "synthetic" if is_synthetic(subject) else f"subjects.{subject}"
        wildcards = SimpleNamespace(subject=subject, variant="mega")
        for section, settings_of, kind in (
            ("face", face_settings, FaceConfig),
            ("hair", hair_settings, HairConfig),
            ("gaussianavatars", gaussianavatars_settings, GaussianAvatarsConfig),
        ):
            where = f"config {section} (with {own}.{section}) of subject '{subject}'"
            kind.from_dict(json.loads(settings_of(wildcards)), where=where)
    for name, entry in EDITS.get("paint", {}).items():
        wildcards = SimpleNamespace(subject=entry["subject"], name=name)
        where = f"config edits.paint_settings (with synthetic.paint, edits.paint.{name}.settings)"
        PaintConfig.from_dict(json.loads(paint_settings(wildcards)), where=where)
