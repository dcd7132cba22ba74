rule synthesize:
    output:
        summary=f"results/data/{SYNTHETIC}/summary.json",
        sheet=f"results/data/{SYNTHETIC}/contact_sheet.png",
    log:
        f"logs/synthesize/{SYNTHETIC}.log",
    benchmark:
        f"results/benchmarks/synthesize/{SYNTHETIC}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("synthesize")
    resources:
        mem_mb=job_resource("synthesize", "mem_mb"),
        runtime=job_resource("synthesize", "runtime"),
        gpu=job_resource("synthesize", "gpu"),
    params:
        mega=MEGA,
        args=synth_args(),
        subject=SYNTHETIC,
        out=parent_dir,
    shell:
        "{params.mega} synth {params.out} --subject {params.subject} {params.args} --quiet > {log} 2>&1"


rule ingest:
    """A real subject's UNION folder checked before any training (every problem listed) and
    summarised; the images stay where they are."""
    input:
        union=union_dir,
    output:
        summary="results/data/{subject}/summary.json",
        inventory="results/data/{subject}/inventory.json",
    log:
        "logs/ingest/{subject}.log",
    benchmark:
        "results/benchmarks/ingest/{subject}.tsv"
    wildcard_constraints:
        # The synthetic subject's summary comes from synthesize.
        subject=rf"(?!{SYNTHETIC}/)[A-Za-z0-9_\-]+",
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("ingest")
    resources:
        mem_mb=job_resource("ingest", "mem_mb"),
        runtime=job_resource("ingest", "runtime"),
        gpu=job_resource("ingest", "gpu"),
    params:
        mega=MEGA,
        out=lambda wc, output: str(Path(output.summary).parent),
    shell:
        "{params.mega} ingest {input.union} --out {params.out} > {log} 2>&1"
