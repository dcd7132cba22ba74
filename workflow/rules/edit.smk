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
        [
            f"results/edits/paint/{entry['subject']}/{name}/summary.json"
            for name, entry in EDITS.get("paint", {}).items()
        ],


rule paint_example:
    """The default painting of a subject: a coloured disc on the cheek of its own render, seen
    from the training camera nearest the frontal one."""
    input:
        unpack(avatar_inputs_mega),
    output:
        image="results/edits/paint/{subject}/example_painting/painted.png",
        mask="results/edits/paint/{subject}/example_painting/mask.png",
        view="results/edits/paint/{subject}/example_painting/view.json",
    log:
        "logs/paint_example/{subject}.log",
    wildcard_constraints:
        subject=SUBJECT_NAMES,
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("paint")
    resources:
        mem_mb=job_resource("paint", "mem_mb"),
        runtime=job_resource("paint", "runtime"),
        gpu=job_resource("paint", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        run=lambda wc, input: str(Path(input.joint).parent),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        out=lambda wc, output: str(Path(output.image).parent),
    shell:
        "{params.mega} paint-example {params.run} {params.union} --head-model {params.head_model} "
        "--rigid {input.rigid} --out {params.out} --threads {threads} --quiet > {log} 2>&1"


rule paint:
    """Texture painting (paper §5): the painting of the config's edits.paint entry (or the
    example) optimised into the face's diffuse texture; before | after in held-out views, a
    turntable, and how far the paint carried (ΔE)."""
    input:
        unpack(paint_inputs),
    output:
        summary="results/edits/paint/{subject}/{name}/summary.json",
        comparison=report(
            "results/edits/paint/{subject}/{name}/comparison.png",
            caption="../report/paint.rst",
            category="Edits",
            subcategory="Texture painting",
            labels={"subject": "{subject}", "painting": "{name}", "figure": "before | after"},
        ),
        video=report(
            "results/edits/paint/{subject}/{name}/turntable.mp4",
            caption="../report/paint.rst",
            category="Edits",
            subcategory="Texture painting",
            labels={"subject": "{subject}", "painting": "{name}", "figure": "turntable"},
        ),
    log:
        "logs/paint/{subject}/{name}.log",
    benchmark:
        "results/benchmarks/paint/{subject}/{name}.tsv"
    wildcard_constraints:
        subject=SUBJECT_NAMES,
        name=r"(?!example_painting$)[A-Za-z0-9_\-]+",
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("paint")
    resources:
        mem_mb=job_resource("paint", "mem_mb"),
        runtime=job_resource("paint", "runtime"),
        gpu=job_resource("paint", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        run=lambda wc, input: str(Path(input.joint).parent),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        out=lambda wc, output: str(Path(output.summary).parent),
        settings=paint_settings,
        frames=VIDEOS.get("turntable_frames", 90),
        degrees=VIDEOS.get("turntable_degrees", 60),
        fps=VIDEOS.get("fps", 30),
    shell:
        "{params.mega} paint {params.run} {params.union} --head-model {params.head_model} --rigid {input.rigid} "
        "--image {input.image} --mask {input.mask} --view {input.view} --settings '{params.settings}' "
        "--out {params.out} --frames {params.frames} --degrees {params.degrees} --fps {params.fps} "
        "--threads {threads} --quiet > {log} 2>&1"
