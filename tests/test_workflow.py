"""The workflow itself: a tiny synthetic subject through Table 1 with two training steps a
stage, the report, a second run that does nothing, and the plans of single targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LPIPS_WEIGHTS = REPO / ".cache" / "mega" / "lpips_alex.pth"
TINY = {
    "synthetic": {
        "width": 32, "height": 44, "frames_per_sequence": 1, "supersample": 1,
        "face": {"tex_size": 16, "disp_size": 16, "uv_encoding_size": 32, "batch_size": 8, "iterations": 2,
                 "checkpoint_every": 1, "val_views": 1, "data_workers": 0},
        "hair": {"init_on_scalp": 100, "init_off_scalp": 100, "hair_iterations": 2, "hair_batch_size": 8,
                 "joint_iterations": 2, "joint_batch_size": 8, "deform_layers": [8, 8], "checkpoint_every": 1,
                 "val_views": 1, "data_workers": 0},
        "paint": {"iterations": 2, "batch_size": 1, "checkpoint_every": 1},
        "gaussianavatars": {"iterations_images": 3, "densify_from_images": 1, "densify_every_images": 1,
                            "checkpoint_every": 1, "data_workers": 0},
    },
    "evaluation": {"lpips_weights": str(LPIPS_WEIGHTS), "save_renders": True, "batch_size": 8},
    "tables": {"table1_baselines": ["gaussianavatars"]},
    "videos": {"turntable_frames": 4, "fps": 4},
}


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "tiny.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule → job count from the 'Job stats' table of a dry run."""
    lines = result.stdout.splitlines()
    start = lines.index("Job stats:") + 3
    jobs = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if not LPIPS_WEIGHTS.is_file():
        pytest.fail(f"{LPIPS_WEIGHTS} is missing: run `make setup` (it makes the LPIPS weights)")
    root = tmp_path_factory.mktemp("workflow")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root


def test_single_ablation_target_plans_only_its_chain(workdir):
    result = snakemake(workdir, "-n", "results/eval/synthetic/nodisp/val/metrics.json", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs.pop("evaluate") == 1 and jobs.pop("train_face") == 1 and jobs.pop("train_joint") == 1
    assert jobs.pop("train_hair") == 1
    assert set(jobs) <= {"head_model", "synthesize", "hair_rigid"}, jobs  # nothing of other variants or tables


def test_table2_plans_every_variant_and_reuses_the_full_face(workdir):
    result = snakemake(workdir, "-n", "results/tables/table2.csv", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    # Seven variants; the two blending ones train no face of their own.
    assert jobs["evaluate"] == 7 and jobs["train_joint"] == 7 and jobs["train_face"] == 5 and jobs["table2"] == 1


def planned_resources(result: subprocess.CompletedProcess) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, wildcards) → {threads, mem_mb, runtime, gpu} from a dry run's job listing."""
    jobs, current = {}, None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = {"rule": line.split()[1].rstrip(":"), "wildcards": "", "threads": "1"}
        elif current is not None and line.strip().startswith(("wildcards:", "threads:")):
            key, value = line.strip().split(":", 1)
            current[key] = value.strip()
        elif current is not None and line.strip().startswith("resources:"):
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
            current.update({key: fields[key] for key in ("mem_mb", "runtime", "gpu")})
            jobs[(current["rule"], current["wildcards"])] = current
    return jobs


def test_jobs_ask_for_the_resources_of_the_config(tmp_path):
    """Real subjects' training asks for a GPU and the real sizes, the synthetic subject's for none;
    a config entry overrides one value and keeps the rest; a misspelt rule name is an error."""
    union = tmp_path / "UNION_306"
    union.mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "subjects": {"306": {"union": str(union)}},
        "resources": {"real": {"train_face": {"mem_mb": 1234}}},
    }))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "c.yaml"), "-n", "--cores", "16"]
    result = subprocess.run([*command, "results/train/306/mega/face.pt", "results/train/synthetic/mega/face.pt"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = planned_resources(result)
    real = jobs[("train_face", "subject=306, variant=mega")]
    synthetic = jobs[("train_face", "subject=synthetic, variant=mega")]
    assert (real["gpu"], real["mem_mb"], real["runtime"], real["threads"]) == ("1", "1234", "1440", "8")
    # One thread: the default job trains the GaussianAvatars baseline beside it.
    assert (synthetic["gpu"], synthetic["mem_mb"], synthetic["threads"]) == ("0", "3000", "1")
    assert jobs[("parse_faces", "subject=306")]["gpu"] == "1"
    assert jobs[("ingest", "subject=306")]["gpu"] == "0"
    # Without the baseline the face stage takes both threads.
    mega_only = [*command[:command.index("-n")], str(REPO / "config" / "examples" / "mega_only.yaml"), "-n",
                 "--cores", "16", "results/train/synthetic/mega/face.pt"]
    alone = subprocess.run(mega_only, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-2000:]
    assert planned_resources(alone)[("train_face", "subject=synthetic, variant=mega")]["threads"] == "2"

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"resources": {"real": {"train_fase": {"mem_mb": 1}}}}))
    bad = subprocess.run([*command, "--configfile", str(tmp_path / "bad.yaml")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "resources.real: unknown rule(s) train_fase" in bad.stdout + bad.stderr


def test_the_workflow_is_parsed_without_loading_torch(tmp_path):
    """Snakemake parses the workflow on every invocation (each dry run, each SLURM job's own
    snakemake): what it reads of the package at start-up (the ablations' settings, the subjects'
    folder checks) is torch-free: a dry run takes 1.4 s of CPU instead of 3.0 (benchmarks/workflow_parse.py)."""
    union = tmp_path / "UNION_306"
    union.mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"subjects": {"306": {"union": str(union)}}}))
    arguments = ["-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "2",
                 "results/tables/table1.csv", "results/tables/table2.csv", "results/train/306/mega/face.pt",
                 "--configfile", str(tmp_path / "c.yaml")]
    code = ("import sys\nfrom snakemake.cli import main\n"
            f"try:\n    main({arguments!r})\nexcept SystemExit as done:\n    status = done.code\n"
            "print('exit', status, 'torch', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "exit 0 torch False" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("overlay, message", [
    ({"tables": {"table1_subjects": ["synthetc"]}}, "config tables.table1_subjects: unknown subject 'synthetc'"),
    ({"edits": {"hairswap": [["synthetic", "synthetic_lng"]]}},
     "config edits.hairswap[0]: unknown subject 'synthetic_lng'"),
    ({"tables": {"table2_variants": ["mega", "nodisplacement"]}},
     "config tables.table2_variants: unknown variant(s) nodisplacement"),
    ({"synthetic": {"face": {"tex_sise": 128}}},
     "config face (with synthetic.face) of subject 'synthetic': unknown setting 'tex_sise'"),
    ({"synthetic": {"hair": {"joint_epochs": "four"}}}, "setting 'joint_epochs' = 'four' should be an integer"),
    ({"edits": {"paint_settings": {"lr_texture": 0}}}, "config edits.paint_settings (with synthetic.paint, "
                                                       "edits.paint.cheek_mark.settings): 'lr_texture' must be positive"),
    ({"synthetic": {"face": {"learning_rate": float("nan")}}},
     "setting 'learning_rate' = nan should be a number, not NaN"),
    # A top-level value that the synthetic settings override is still checked, before a real
    # subject that would train with it is added.
    ({"face": {"batch_size": "four"}, "synthetic": {"face": {"batch_size": 2}}},
     "config face: setting 'batch_size' = 'four' should be an integer"),
    ({"hair": {"hair_iterations": -3}}, "config hair: 'hair_iterations' must be"),
    # The schema's errors in one line naming the key (Snakemake's own prints the whole schema first).
    ({"subjects": {"306": {"union": "/data/306", "metashap": "/x"}}},
     "config subjects.306: Additional properties are not allowed ('metashap' was unexpected) (known: union, "),
    ({"synthetic": {"others": {"s2": {"cameras": 0}}}},
     "config synthetic.others.s2.cameras: 0 is less than the minimum"),
    # Subject names: YAML's unquoted 306 is a number; a space never matches the wildcards; a real
    # subject named like a synthetic one would be silently replaced by it.
    ({"subjects": {306: {"union": "/data/306"}}},
     "config subjects: the name 306 is not a string (YAML read it as int): quote it"),
    ({"subjects": {"30 6": {"union": "/data/306"}}}, "config subjects: the name '30 6' may hold only letters, digits"),
    ({"subjects": {"synthetic_long": {"union": "/data/306"}}},
     "config subjects: 'synthetic_long' is also a synthetic subject's name"),
    ({"synthetic": {"others": {"synthetic": {"seed": 3}}}},
     "config synthetic.others: 'synthetic' is the default synthetic subject's name"),
])
def test_a_misspelt_name_or_setting_in_the_config_stops_the_workflow_before_any_job(tmp_path, overlay, message):
    """Names (subjects, variants) and the stages' settings are checked when the workflow is
    parsed, with the config key in the message: not a traceback, not a job failing after hours."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "bad.yaml"), "-n", "--cores", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stderr[-2000:]


def test_a_real_subjects_missing_folder_is_named_by_its_config_key_when_a_job_needs_it(tmp_path):
    """A UNION path that does not exist stops a run that needs the subject with the config key in
    the message; a dry run of the synthetic subject's targets with the same config is not stopped
    (the data disk need not be mounted to work on the synthetic subject)."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"subjects": {"306": {"union": str(tmp_path / "UNION10_306")}}}))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "c.yaml"), "-n", "--cores", "2"]
    real = subprocess.run([*command, "results/data/306/summary.json"], capture_output=True, text=True, timeout=300)
    assert real.returncode != 0, real.stdout[-2000:]
    assert f"config subjects.306.union: {tmp_path / 'UNION10_306'} is missing; expected the subject's " \
           "GaussianAvatars UNION folder" in real.stdout + real.stderr, real.stderr[-2000:]
    synthetic = subprocess.run([*command, "results/data/synthetic/summary.json"], capture_output=True, text=True,
                               timeout=300)
    assert synthetic.returncode == 0, synthetic.stderr[-2000:]


def test_other_synthetic_subjects_pass_their_own_hair_options_to_synth(tmp_path):
    """A subject under synthetic.others is made with its own hair options; the default subject's
    command names none (so that subjects made before the options were added are not remade)."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"synthetic": {"others": {
        "locks": {"seed": 3, "hairstyle": "long", "cameras": 12, "hair_clumps": 200, "hair_strands": 10000,
                  "hair_render": "antialiased", "hair_sway_mm": 0}}}}))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "c.yaml"), "-n", "-p", "--cores", "2",
               "results/data/locks/summary.json", "results/data/synthetic/summary.json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    synth = {line.split("mega synth ")[1].split()[0]: line for line in result.stdout.splitlines()
             if "mega synth " in line}
    assert set(synth) == {"results/data/locks", "results/data/synthetic"}
    locks = synth["results/data/locks"]
    for option in ("--seed 3 ", "--hair long ", "--cameras 12 ", "--hair-render antialiased", "--hair-clumps 200",
                   "--hair-strands 10000", "--hair-sway-mm 0"):
        assert option in locks, (option, locks)
    assert "--hair-clumps" not in synth["results/data/synthetic"]
    assert "--hair-strands" not in synth["results/data/synthetic"]
    assert "--hair-render" not in synth["results/data/synthetic"]
    assert "--hair-sway-mm" not in synth["results/data/synthetic"]

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"synthetic": {"others": {"x": {"hair_clumps": -1}}}}))
    bad = subprocess.run([*command[:command.index("-n")], str(tmp_path / "bad.yaml"), "-n", "results/data/x/summary.json"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "hair_clumps" in bad.stdout + bad.stderr


def test_table1_runs_then_nothing_is_left_to_do_and_the_report_builds(workdir):
    result = snakemake(workdir, "--cores", "2", "results/tables/table1.csv", "all")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(workdir / "results" / "tables" / "table1.csv")
    measured = table[table["source"] == "measured"]
    assert list(measured["subject"]) == ["synthetic", "synthetic"]
    assert list(measured["method"]) == ["MeGA (this run)", "GaussianAvatars (this run)"]
    assert measured[["nv_psnr", "ne_psnr", "nv_lpips", "nv_psnr_face"]].notna().all().all()
    assert measured["nv_psnr_best"].sum() >= 1  # the better measured method is marked
    assert (workdir / "results" / "figures" / "synthetic" / "methods.png").stat().st_size > 1000
    assert (table["source"] == "reported").sum() == 5
    assert "| MeGA | mean of 9" in (workdir / "results" / "tables" / "table1.md").read_text()
    for video in ("turntable", "expression"):
        assert (workdir / "results" / "videos" / "synthetic" / "mega" / f"{video}.mp4").stat().st_size > 1000
    metrics = json.loads((workdir / "results" / "eval" / "synthetic" / "mega" / "val" / "metrics.json").read_text())
    assert "blurred 3 x 3 at sigma 0.375 px" in metrics["blending"]  # the synthetic settings' quarter sizes
    rows = pd.read_csv(workdir / "results" / "eval" / "synthetic" / "mega" / "val" / "metrics.csv")
    assert all((workdir / "results" / "eval" / "synthetic" / "mega" / "val" / r).is_file() for r in rows["render"])

    again = snakemake(workdir, "-n", "results/tables/table1.csv", "all")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    report = snakemake(workdir, "--report", str(workdir / "report.html"), "results/tables/table1.csv", "all")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    assert "table1.csv" in html and "turntable.mp4" in html


def test_edits_swap_hair_both_ways_and_paint_the_example(workdir):
    """The second synthetic subject (long hair, another seed) is made and trained only for the
    edits; each subject then wears the other's hair, and the default subject gets the example
    painting. After Table 1 in the same folder, the default subject's avatar is reused."""
    default_face_log = workdir / "logs" / "train_face" / "synthetic" / "mega.log"
    trained_before = default_face_log.stat().st_mtime if default_face_log.is_file() else None
    result = snakemake(workdir, "--cores", "2", "edits")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Job stats" in result.stdout + result.stderr
    for face, hair in (("synthetic", "synthetic_long"), ("synthetic_long", "synthetic")):
        out = workdir / "results" / "edits" / "hairswap" / f"{face}_with_{hair}"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_images"]["test"] > 0 and summary["scalp_alignment"]["scalp_rmse_mm"] < 10
        assert (out / "turntable.mp4").stat().st_size > 1000 and (out / "comparison.png").is_file()
    painted = workdir / "results" / "edits" / "paint" / "synthetic" / "cheek_mark"
    summary = json.loads((painted / "summary.json").read_text())
    assert summary["painted_texels"] > 0 and set(summary["held_out"]) == {"val", "test"}
    assert (painted / "comparison.png").is_file() and (painted / "turntable.mp4").stat().st_size > 1000
    assert (workdir / "results" / "data" / "synthetic_long" / "contact_sheet.png").is_file()
    if trained_before is not None:  # Table 1 ran first in this folder: its avatar is not trained again
        assert default_face_log.stat().st_mtime == trained_before


def test_a_real_subject_without_parsing_goes_from_ingest_to_its_metrics(tmp_path):
    """A subject folder without parsing, depth or a one-frame split, and a Metashape export of
    its depth: ingest, parse_faces (a parser of the right architecture with weights this test
    saves), import_depth, the overlay, two steps of each stage and its evaluation, through the
    workflow's own rules."""
    import shutil

    import torch
    from test_metashape import write_export

    from mega.data.face_parsing import build_parser
    from mega.data.fixtures import write_fixture_subject

    if not LPIPS_WEIGHTS.is_file():
        pytest.fail(f"{LPIPS_WEIGHTS} is missing: run `make setup` (it makes the LPIPS weights)")
    union = write_fixture_subject(tmp_path / "data", n_sequences=2, n_timesteps=2, n_cameras=9, width=32, height=44)
    write_export(union, tmp_path / "metashape")
    for extra in ("parsing", "depths"):
        for folder in union.parent.glob(f"*/{extra}"):
            shutil.rmtree(folder)
    (union / "transforms_onef.json").unlink(missing_ok=True)
    torch.manual_seed(0)
    torch.save(build_parser("bisenet").state_dict(), tmp_path / "bisenet.pth")
    tiny = {**TINY, "synthetic": {"enabled": False}, "subjects": {"999": {
        "union": str(union), "metashape": str(tmp_path / "metashape"),
        "face": {**TINY["synthetic"]["face"], "require_parsing": False},
        "hair": TINY["synthetic"]["hair"]}},
        "preprocess": {"parsing_model": "bisenet", "parsing_weights": str(tmp_path / "bisenet.pth")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    result = snakemake(tmp_path, "--cores", "2", "results/eval/999/mega/val/metrics.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list((tmp_path / "results" / "preprocess" / "999" / "parsing").rglob("*_labels.png"))) == 2 * 2 * 9
    overlay = tmp_path / "results" / "preprocess" / "999" / "union" / union.name
    assert (overlay / "transforms_onef.json").is_file() and not (union / "transforms_onef.json").exists()
    metrics = json.loads((tmp_path / "results" / "eval" / "999" / "mega" / "val" / "metrics.json").read_text())
    assert len(list((tmp_path / "results" / "preprocess" / "999" / "depths").rglob("*.npz"))) == 2 * 2 * 9
    assert metrics["n_images"] == 2 and metrics["psnr"] > 0  # camera 8 at the 2 frames of the train sequence
    assert metrics["depth_mae_mm"] is not None  # the imported depth reached evaluation
    # A real subject is blended at the authors' pixel sizes (the synthetic settings' quarter sizes stay theirs).
    assert metrics["blending"] == ("2nd near-z, occlusion mask opened 3 x 3 and closed 5 x 5, blurred 5 x 5 at "
                                   "sigma 1.5 px (the authors' evaluation)")


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "config" / "examples").glob("*.yaml")))
def test_every_example_config_is_valid_over_the_default_config(example):
    """What `--configfile config/examples/<example>` gives the workflow (the file laid over
    config/config.yaml, as Snakemake merges them) passes the schema the workflow checks at start-up,
    and each synthetic subject it adds names a seed and a hairstyle of its own."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((REPO / "config" / "examples" / example).read_text())
    assert isinstance(overlay, dict), example
    update_config(config, overlay)
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    for name, subject in ((overlay.get("synthetic") or {}).get("others") or {}).items():
        assert {"seed", "hairstyle"} <= set(subject), f"{example}: synthetic.others.{name}"
