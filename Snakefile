# mega: MeGA head avatars from multi-view video.
#   snakemake --cores 2                      the default job (embedded head model and subject)
#   snakemake --cores 8 results/tables/table1.csv
#   snakemake --cores 2 edits                the hairstyle swaps of the config's edits section
# Settings: config/config.yaml (validated against workflow/schemas/config.schema.yaml).
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# Beside this file, so that `snakemake -d OTHER_DIR` reads the same defaults.
configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/head_model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/edit.smk"


# Cheap jobs run where snakemake runs, not as cluster jobs: a cluster's job start-up would
# dominate them (profiles/slurm). Resources of the others: config/config.yaml, resources.
localrules:
    all,
    table2_all,
    head_model,
    ingest,
    prepare_subject,
    lpips_weights,
    table1,
    table2,
    ablation_grid,
    method_grid,
    training_curves,
    edits,


check_resource_rules()
check_config_names()
check_stage_settings()


rule all:
    """The default job: Table 1 (and every avatar's figures, videos and export)."""
    default_target: True
    input:
        default_targets(),
        "results/tables/table1.csv",
        expand(
            "results/{kind}/{subject}/mega/{name}",
            kind=["figures"],
            subject=table1_subjects(),
            name=["training.png"],
        ),
        expand(
            "results/figures/{subject}/methods.png",
            subject=table1_subjects() if TABLE1_BASELINES else [],
        ),
        expand(
            "results/videos/{subject}/mega/{kind}.mp4",
            subject=table1_subjects(),
            kind=["turntable", "expression"],
        ),


rule table2_all:
    """Table 2 and its figure (every ablation trained and evaluated on one subject)."""
    input:
        "results/tables/table2.csv",
        f"results/figures/{ABLATION_SUBJECT}/ablations.png",
