rule hair_rigid:
    """The hair's per-frame rigid transforms (paper eq. 5): the canonical frame's scalp ICP-aligned
    onto every frame's, from the tracked FLAME parameters, for every split."""
    input:
        subject="results/data/{subject}/summary.json",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        "results/preprocess/{subject}/hair_rigid.npz",
    log:
        "logs/hair_rigid/{subject}.log",
    benchmark:
        "results/benchmarks/hair_rigid/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        mega=MEGA,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
    shell:
        "{params.mega} hair-rigid {params.union} --head-model {params.head_model} --out {output} "
        "> {log} 2>&1"
