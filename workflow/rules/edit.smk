rule swap_hair:
    """Hairstyle swap (paper §5): subject a's full model wearing subject b's hair, aligned by
    their scalps and driven by a's expressions; a's val and test views, a comparison and a
    turntable."""
    input:
        unpack(swap_inputs),
    output:
        summary="results/edits/hairswap/{a}_with_{b}/summary.json",
        comparison=report(
            "results/edits/hairswap/{a}_with_{b}/comparison.png",
            caption="../report/hairswap.rst",
            category="Edits",
            subcategory="Hairstyle swap",
            labels={"face": "{a}", "hair": "{b}", "figure": "comparison"},
        ),
        video=report(
            "results/edits/hairswap/{a}_with_{b}/turntable.mp4",
            caption="../report/hairswap.rst",
            category="Edits",
            subcategory="Hairstyle swap",
            labels={"face": "{a}", "hair": "{b}", "figure": "turntable"},
        ),
    log:
        "logs/swap_hair/{a}_with_{b}.log",
    benchmark:
        "results/benchmarks/swap_hair/{a}_with_{b}.tsv"
    wildcard_constraints:
        a=SUBJECT_NAMES,
        b=SUBJECT_NAMES,
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("swap_hair")
    resources:
        mem_mb=job_resource("swap_hair", "mem_mb"),
        runtime=job_resource("swap_hair", "runtime"),
        gpu=job_resource("swap_hair", "gpu"),
    params:
        mega=MEGA,
        face_run=lambda wc, input: str(Path(input.face_joint).parent),
        face_union=lambda wc: union_of(wc.a),
        hair_run=lambda wc, input: str(Path(input.hair_joint).parent),
        hair_union=lambda wc: union_of(wc.b),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        out=lambda wc, output: str(Path(output.summary).parent),
        frames=VIDEOS.get("turntable_frames", 90),
        degrees=VIDEOS.get("turntable_degrees", 60),
        fps=VIDEOS.get("fps", 30),
    shell:
        "{params.mega} swap-hair --face-run {params.face_run} --face-union {params.face_union} "
        "--face-rigid {input.face_rigid} --hair-run {params.hair_run} --hair-union {params.hair_union} "
        "--head-model {params.head_model} --out {params.out} --frames {params.frames} "
        "--degrees {params.degrees} --fps {params.fps} --threads {threads} --quiet > {log} 2>&1"


rule edits:
    """Every edit of the config's edits section (not part of Table 1)."""
    input:
        expand(
            "results/edits/hairswap/{pair}/summary.json",
            pair=[f"{a}_with_{b}" for a, b in EDITS.get("hairswap", [])],
        ),
