rule train_face:
    """Stage 1: the neural mesh face of one subject and variant. An interrupted job resumes from
    face/checkpoint.pt; a job rerun because the settings changed starts over."""
    input:
        subject="results/data/{subject}/summary.json",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        face="results/train/{subject}/{variant}/face.pt",
        metrics="results/train/{subject}/{variant}/face/metrics.json",
        curves="results/train/{subject}/{variant}/face/loss.png",
    log:
        "logs/train_face/{subject}/{variant}.log",
    benchmark:
        "results/benchmarks/train_face/{subject}/{variant}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wc: 60 if wc.subject == SYNTHETIC else 1440,
        gpu=lambda wc: 0 if wc.subject == SYNTHETIC else 1,
    params:
        mega=MEGA,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        settings=face_settings,
        out=lambda wc, output: str(Path(output.face).parent),
    shell:
        "{params.mega} train-face {params.union} --out {params.out} --head-model {params.head_model} "
        "--variant {wildcards.variant} --settings '{params.settings}' --threads {threads} "
        "--on-settings-change restart > {log} 2>&1"
