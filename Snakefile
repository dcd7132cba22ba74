# mega: MeGA head avatars from multi-view video.
#   snakemake --cores 2                      the default job (embedded head model and subject)
#   snakemake --cores 8 results/tables/table1.csv
# Settings: config/config.yaml (validated against workflow/schemas/config.schema.yaml).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/head_model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/preprocess.smk"


rule all:
    default_target: True
    input:
        default_targets(),
