rule synthesize:
    """A synthetic subject in the real data's layout: the default one, or another of
    synthetic.others (its own seed and hairstyle)."""
    output:
        summary="results/data/{subject}/summary.json",
        sheet="results/data/{subject}/contact_sheet.png",
    log:
        "logs/synthesize/{subject}.log",
    benchmark:
        "results/benchmarks/synthesize/{subject}.tsv"
    wildcard_constraints:
        subject="|".join(SYNTHETIC_SUBJECTS),
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("synthesize")
    resources:
        mem_mb=job_resource("synthesize", "mem_mb"),
        runtime=job_resource("synthesize", "runtime"),
        gpu=job_resource("synthesize", "gpu"),
    params:
        mega=MEGA,
        args=synth_args,
        out=parent_dir,
    shell:
        "{params.mega} synth {params.out} --subject {wildcards.subject} {params.args} --quiet > {log} 2>&1"


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
        # The synthetic subjects' summaries come from synthesize.
        subject=rf"(?!({'|'.join(SYNTHETIC_SUBJECTS)})/)[A-Za-z0-9_\-]+",
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
