rule hair_rigid:
    """The hair's per-frame rigid transforms (paper eq. 5): the canonical frame's scalp ICP-aligned
    onto every frame's, from the tracked FLAME parameters, for every split."""
    input:
        subject=subject_ready,
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        "results/preprocess/{subject}/hair_rigid.npz",
    log:
        "logs/hair_rigid/{subject}.log",
    benchmark:
        "results/benchmarks/hair_rigid/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("hair_rigid")
    resources:
        mem_mb=job_resource("hair_rigid", "mem_mb"),
        runtime=job_resource("hair_rigid", "runtime"),
        gpu=job_resource("hair_rigid", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
    shell:
        "{params.mega} hair-rigid {params.union} --head-model {params.head_model} --out {output} "
        "> {log} 2>&1"


rule parse_faces:
    """Face parsing of a real subject without it: facexlib's parser (preprocess.parsing_model)
    with the weights file of preprocess.parsing_weights, on the GPU when there is one; resumes
    where an interrupted run stopped."""
    input:
        inventory="results/data/{subject}/inventory.json",
    output:
        "results/preprocess/{subject}/parsing/summary.json",
    log:
        "logs/parse_faces/{subject}.log",
    benchmark:
        "results/benchmarks/parse_faces/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("parse_faces")
    resources:
        mem_mb=job_resource("parse_faces", "mem_mb"),
        runtime=job_resource("parse_faces", "runtime"),
        gpu=job_resource("parse_faces", "gpu"),
    params:
        mega=MEGA,
        union=union_dir,
        model=PREPROCESS.get("parsing_model", "parsenet"),
        weights=PREPROCESS.get("parsing_weights", ""),
        out=lambda wc, output: str(Path(output[0]).parent),
    shell:
        "{params.mega} parse-faces {params.union} --out {params.out} --model {params.model} "
        "--weights '{params.weights}' --threads {threads} --quiet > {log} 2>&1"


rule import_depth:
    """Depth maps of a real subject from its Metashape export (subjects.<id>.metashape), in
    metres in the subject's world, placed by fitting Metashape's cameras to the rig's."""
    input:
        inventory="results/data/{subject}/inventory.json",
    output:
        "results/preprocess/{subject}/depths/summary.json",
    log:
        "logs/import_depth/{subject}.log",
    benchmark:
        "results/benchmarks/import_depth/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("import_depth")
    resources:
        mem_mb=job_resource("import_depth", "mem_mb"),
        runtime=job_resource("import_depth", "runtime"),
        gpu=job_resource("import_depth", "gpu"),
    params:
        mega=MEGA,
        union=union_dir,
        export=lambda wc: config["subjects"][wc.subject].get("metashape", ""),
        units=lambda wc: config["subjects"][wc.subject].get("metashape_depth_units", "internal"),
        out=lambda wc, output: str(Path(output[0]).parent),
    shell:
        "{params.mega} import-depth {params.union} --export '{params.export}' --out {params.out} "
        "--depth-units {params.units} --quiet > {log} 2>&1"


rule prepare_subject:
    """A real subject as training reads it: its own folder, with the parsing and depths made
    here (when it had none) and a one-frame split (when it had none) in place; images linked,
    not copied."""
    input:
        unpack(overlay_inputs),
    output:
        "results/preprocess/{subject}/union/overlay.json",
    log:
        "logs/prepare_subject/{subject}.log",
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("prepare_subject")
    resources:
        mem_mb=job_resource("prepare_subject", "mem_mb"),
        runtime=job_resource("prepare_subject", "runtime"),
        gpu=job_resource("prepare_subject", "gpu"),
    params:
        mega=MEGA,
        union=union_dir,
        args=overlay_args,
        out=lambda wc, output: str(Path(output[0]).parent),
    shell:
        "{params.mega} overlay {params.union} --out {params.out} {params.args} > {log} 2>&1"
