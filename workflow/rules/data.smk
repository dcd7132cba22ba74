rule inspect_subject:
    input:
        union=union_dir,
    output:
        "results/data/{subject}/summary.json",
    log:
        "logs/inspect_subject/{subject}.log",
    benchmark:
        "results/benchmarks/inspect_subject/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        mega=MEGA,
    shell:
        "{params.mega} inspect-subject {input.union} --out {output} > {log} 2>&1"


localrules:
    inspect_subject,
