rule train_face:
    """Stage 1: the neural mesh face of one subject and variant. An interrupted job resumes from
    face/checkpoint.pt; a job rerun because the settings changed starts over."""
    input:
        subject=subject_ready,
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
    threads: job_threads("train_face")
    resources:
        mem_mb=job_resource("train_face", "mem_mb"),
        runtime=job_resource("train_face", "runtime"),
        gpu=job_resource("train_face", "gpu"),
    params:
        mega=MEGA,
        ablations=ABLATIONS_FILE,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        settings=face_settings,
        out=lambda wc, output: str(Path(output.face).parent),
    shell:
        "{params.mega} train-face {params.union} --out {params.out} --head-model {params.head_model} "
        "--variant {wildcards.variant} --ablations {params.ablations} --settings '{params.settings}' --threads {threads} "
        "--on-settings-change restart > {log} 2>&1"


rule train_hair:
    """Stage 2: the canonical Gaussian hair on the one-frame split, the stage-1 face fixed. An
    interrupted job resumes from hair/checkpoint.pt."""
    input:
        face=face_of,
        rigid="results/preprocess/{subject}/hair_rigid.npz",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        hair="results/train/{subject}/{variant}/hair.pt",
        metrics="results/train/{subject}/{variant}/hair/metrics.json",
        curves="results/train/{subject}/{variant}/hair/loss.png",
    log:
        "logs/train_hair/{subject}/{variant}.log",
    benchmark:
        "results/benchmarks/train_hair/{subject}/{variant}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("train_hair")
    resources:
        mem_mb=job_resource("train_hair", "mem_mb"),
        runtime=job_resource("train_hair", "runtime"),
        gpu=job_resource("train_hair", "gpu"),
    params:
        mega=MEGA,
        ablations=ABLATIONS_FILE,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        settings=hair_settings,
        out=lambda wc, output: str(Path(output.hair).parent),
    shell:
        "{params.mega} train-hair {params.union} --out {params.out} --head-model {params.head_model} "
        "--face {input.face} --rigid {input.rigid} --variant {wildcards.variant} --ablations {params.ablations} "
        "--settings '{params.settings}' --threads {threads} --on-settings-change restart > {log} 2>&1"


rule train_joint:
    """Stage 3: the hair's deformation field and the face's appearance on all training frames,
    then val/test metrics of the hybrid beside the face alone and a figure of a few views."""
    input:
        face=face_of,
        hair="results/train/{subject}/{variant}/hair.pt",
        rigid="results/preprocess/{subject}/hair_rigid.npz",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        joint="results/train/{subject}/{variant}/joint.pt",
        metrics="results/train/{subject}/{variant}/joint/metrics.json",
        curves="results/train/{subject}/{variant}/joint/loss.png",
        figure="results/train/{subject}/{variant}/joint/val.png",
    log:
        "logs/train_joint/{subject}/{variant}.log",
    benchmark:
        "results/benchmarks/train_joint/{subject}/{variant}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("train_joint")
    resources:
        mem_mb=job_resource("train_joint", "mem_mb"),
        runtime=job_resource("train_joint", "runtime"),
        gpu=job_resource("train_joint", "gpu"),
    params:
        mega=MEGA,
        ablations=ABLATIONS_FILE,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        settings=hair_settings,
        out=lambda wc, output: str(Path(output.joint).parent),
    shell:
        "{params.mega} train-joint {params.union} --out {params.out} --head-model {params.head_model} "
        "--face {input.face} --hair {input.hair} --rigid {input.rigid} --variant {wildcards.variant} --ablations {params.ablations} "
        "--settings '{params.settings}' --threads {threads} --on-settings-change restart > {log} 2>&1"


rule train_gaussianavatars:
    """The GaussianAvatars baseline of Table 1 (docs/baselines.md): Gaussians bound to FLAME's
    triangles, trained on the same subject and splits. An interrupted job resumes from
    gaussianavatars/checkpoint.pt."""
    input:
        subject=subject_ready,
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        model="results/train/{subject}/gaussianavatars/gaussianavatars.pt",
        metrics="results/train/{subject}/gaussianavatars/gaussianavatars/metrics.json",
        curves="results/train/{subject}/gaussianavatars/gaussianavatars/loss.png",
    log:
        "logs/train_gaussianavatars/{subject}.log",
    benchmark:
        "results/benchmarks/train_gaussianavatars/{subject}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("train_gaussianavatars")
    resources:
        mem_mb=job_resource("train_gaussianavatars", "mem_mb"),
        runtime=job_resource("train_gaussianavatars", "runtime"),
        gpu=job_resource("train_gaussianavatars", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        settings=gaussianavatars_settings,
        out=lambda wc, output: str(Path(output.model).parent),
    shell:
        "{params.mega} train-gaussianavatars {params.union} --out {params.out} --head-model {params.head_model} "
        "--settings '{params.settings}' --threads {threads} --on-settings-change restart > {log} 2>&1"


rule export_avatar:
    """A trained avatar as standard files: the face as OBJ + MTL + PNG (diffuse texture decoded
    to RGB) and the canonical hair as a 3D Gaussian Splatting PLY."""
    input:
        joint="results/train/{subject}/{variant}/joint.pt",
        hair="results/train/{subject}/{variant}/hair.pt",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
    output:
        ply="results/export/{subject}/{variant}/hair_canonical.ply",
        obj="results/export/{subject}/{variant}/face.obj",
    log:
        "logs/export_avatar/{subject}/{variant}.log",
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("export_avatar")
    resources:
        mem_mb=job_resource("export_avatar", "mem_mb"),
        runtime=job_resource("export_avatar", "runtime"),
        gpu=job_resource("export_avatar", "gpu"),
    params:
        mega=MEGA,
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        run=lambda wc, input: str(Path(input.joint).parent),
        out=lambda wc, output: str(Path(output.ply).parent),
    shell:
        "{params.mega} export {params.run} --head-model {params.head_model} --out {params.out} > {log} 2>&1"
