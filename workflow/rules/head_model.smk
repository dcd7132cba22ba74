rule head_model:
    output:
        summary=f"{HEAD_MODEL_DIR}/summary.json",
        preview=f"{HEAD_MODEL_DIR}/preview.png",
    log:
        "logs/head_model.log",
    benchmark:
        "results/benchmarks/head_model.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("head_model")
    resources:
        mem_mb=job_resource("head_model", "mem_mb"),
        runtime=job_resource("head_model", "runtime"),
        gpu=job_resource("head_model", "gpu"),
    params:
        mega=MEGA,
        args=head_model_args(),
        out=parent_dir,
    shell:
        "{params.mega} head-model {params.args} --out {params.out} > {log} 2>&1"
