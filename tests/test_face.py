"""The neural mesh face: architecture, ablation switches, and stage-1 training on a tiny subject."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mega import losses
from mega.cli import main
from mega.data.camera import Camera
from mega.errors import ConfigError, DataError, TrainingError
from mega.ablations import load_ablations
from mega.face.config import FaceConfig
from mega.face.decoders import DisplacementDecoder, DynamicDecoder, ViewDecoder
from mega.face.model import NeuralFace
from mega.face.pixel_decoder import PixelDecoder
from mega.flame.head_model import load_head_model_folder
from mega.losses import dssim
from mega.train.face import load_face, train_face
from mega.train.loop import batch_indices

TINY_SUBJECT = ["--width", "28", "--height", "40", "--sequences", "2", "--frames", "1", "--quiet"]
TINY_FACE = FaceConfig(tex_size=16, disp_size=16, uv_encoding_size=32, batch_size=15, iterations=2,
                       learning_rate=0.01, checkpoint_every=1, val_views=2, data_workers=0)

ABLATIONS_FILE = Path(__file__).resolve().parents[1] / "config" / "ablations.yaml"
ABLATIONS = load_ablations(ABLATIONS_FILE)


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> tuple[Path, Path]:
    """(UNION folder, head-model folder) of a 28 × 40 synthetic subject: 15 train images."""
    root = tmp_path_factory.mktemp("face")
    assert main(["head-model", "--out", str(root / "head_model")]) == 0
    assert main(["synth", str(root / "synthetic"), *TINY_SUBJECT]) == 0
    summary = json.loads((root / "synthetic" / "summary.json").read_text())
    return root / "synthetic" / summary["union"], root / "head_model"


def head_of(folder: Path):
    return load_head_model_folder(folder)


def frame_batch(model: NeuralFace, batch: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"shape": torch.zeros(batch, 300), "expr": torch.randn(batch, 100) * 0.3,
            "rotation": torch.randn(batch, 3) * 0.05, "neck_pose": torch.zeros(batch, 3),
            "jaw_pose": torch.zeros(batch, 3), "eyes_pose": torch.zeros(batch, 6), "translation": torch.zeros(batch, 3)}


def cameras(batch: int = 2, size: tuple[int, int] = (28, 40)) -> Camera:
    from mega.data.rig import nersemble_like_rig
    rig = nersemble_like_rig(*size, 16)
    return Camera.stack([rig[8], rig[3]][:batch])


# ----------------------------------------------------------------------------- architecture
def test_pixel_decoder_has_307_parameters():
    decoder = PixelDecoder()
    assert sum(p.numel() for p in decoder.parameters()) == 307
    rgb = decoder(torch.randn(10, 16))
    assert rgb.shape == (10, 3) and bool(((rgb > 0) & (rgb < 1)).all())


def test_decoder_shapes_follow_the_authors_architecture():
    driving = torch.randn(2, 115)
    assert ViewDecoder(12, 64)(torch.randn(2, 3)).shape == (2, 12, 64, 64)
    assert DynamicDecoder(12, 32)(driving).shape == (2, 12, 32, 32)
    assert DisplacementDecoder(64, 0.001)(driving).shape == (2, 3, 64, 64)
    # 1024² textures: seven blocks with the authors' widths; the 256² displacement map: five.
    view = ViewDecoder(12, 1024)
    widths = [(b.conv.in_channels, b.conv.out_channels, b.bias.shape[-1]) for b in view.blocks]
    assert widths == [(3, 64, 8), (64, 32, 16), (32, 32, 32), (32, 16, 64), (16, 16, 128), (16, 8, 256), (8, 12, 512)]
    disp = DisplacementDecoder(256, 0.001)
    assert [b.conv.out_channels for b in disp.blocks] == [64, 32, 32, 16, 3]
    with pytest.raises(ValueError, match="8 · 2\\^k"):
        ViewDecoder(12, 100)


def test_model_outputs(subject):
    _, head_dir = subject
    model = NeuralFace(head_of(head_dir), TINY_FACE)
    out = model(frame_batch(model), cameras())
    assert out["rgb"].shape == out["rgb_diffuse"].shape == (2, 3, 40, 28)
    assert out["mask"].shape == out["depth"].shape == (2, 1, 40, 28)
    assert 0.1 < out["mask"].float().mean() < 0.9
    depth = out["depth"][out["mask"]]
    assert bool((depth > 0.5).all() and (depth < 2.0).all())  # metres, the rig is ~1 m away
    # Off the mesh: white and no depth.
    assert bool((out["rgb"][:, :, ~out["mask"][0, 0]][0] == 1).all())
    assert out["vertices"].shape == out["vertices_flame"].shape == (2, model.mesh.n_vertices, 3)
    # The texture offsets handed back are eq. 3's T_v + T_dy for these views and frames.
    as_if_trained(model)
    out = model(frame_batch(model), cameras())
    view = NeuralFace.view_direction(cameras(), out["vertices_flame"])
    expected = model.neural_texture(frame_batch(model), view) - model.diffuse_texture
    assert out["texture_offsets"].abs().max() > 0 and torch.allclose(out["texture_offsets"], expected, atol=1e-6)


def texture_of(model: NeuralFace, expr_scale: float, view: torch.Tensor) -> torch.Tensor:
    flame = frame_batch(model, 1)
    flame["expr"] = flame["expr"] * expr_scale
    return model.neural_texture(flame, view)


def as_if_trained(model: NeuralFace) -> NeuralFace:
    """Decoders start as no-ops (last layer zero); move them off zero as training would."""
    torch.manual_seed(2)
    with torch.no_grad():
        for decoder in (model.view_decoder, model.dynamic_decoder, model.displacement_decoder):
            if decoder is not None:
                decoder.blocks[-1].expand.weight.normal_()
                decoder.blocks[-1].expand.bias.normal_()
    return model.eval()


def test_decoders_start_as_no_ops(subject):
    model = NeuralFace(head_of(subject[1]), TINY_FACE).requires_grad_(False)
    assert float(model.displacement(torch.randn(2, 115)).abs().max()) == 0.0
    view = torch.tensor([[0.0, 0.0, 1.0]])
    assert torch.equal(model.neural_texture(frame_batch(model, 1), view), model.diffuse_texture)


def test_half_precision_texture_decoders_stay_close_and_train(subject):
    """decoder_precision runs the view and dynamic decoders under autocast (bfloat16 here, on the
    CPU): the texture offsets come back in float32, within bfloat16's rounding of the float32
    ones, and the decoders still get gradients."""
    head = head_of(subject[1])
    full = as_if_trained(NeuralFace(head, TINY_FACE))
    half = as_if_trained(NeuralFace(head, TINY_FACE.replace(decoder_precision="bfloat16")))
    half.load_state_dict(full.state_dict())
    flame, view = frame_batch(full, 2), torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    reference = full.texture_offsets(flame, view)
    offsets = half.texture_offsets(flame, view)
    assert offsets.dtype == torch.float32 and not torch.equal(offsets, reference)  # it did run in bfloat16
    assert float((offsets - reference).detach().abs().max()) < 0.05 * float(reference.detach().abs().max())
    offsets.square().mean().backward()
    grads = [p.grad for p in (*half.view_decoder.parameters(), *half.dynamic_decoder.parameters())]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    with pytest.raises(ConfigError, match="decoder_precision"):
        TINY_FACE.replace(decoder_precision="half").check()


@pytest.mark.parametrize("variant", ["noview", "nodyn", "nodisp", "nosubdiv"])
def test_each_ablation_removes_its_component(subject, variant):
    _, head_dir = subject
    head = head_of(head_dir)
    full = as_if_trained(NeuralFace(head, TINY_FACE)).requires_grad_(False)
    ablated = as_if_trained(NeuralFace(head, TINY_FACE.replace(**ABLATIONS[variant].face))).requires_grad_(False)
    front, side = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.8, 0.0, 0.6]])
    view_changes = lambda m: not torch.allclose(texture_of(m, 1, front), texture_of(m, 1, side))  # noqa: E731
    expr_changes = lambda m: not torch.allclose(texture_of(m, 1, front), texture_of(m, 2, front))  # noqa: E731
    assert view_changes(full) and expr_changes(full)
    if variant == "noview":
        assert ablated.view_decoder is None and not view_changes(ablated) and expr_changes(ablated)
    elif variant == "nodyn":
        assert ablated.dynamic_decoder is None and not expr_changes(ablated) and view_changes(ablated)
    elif variant == "nodisp":
        assert ablated.displacement_decoder is None
        assert float(ablated.displacement(torch.randn(2, 115)).abs().max()) == 0.0
        # The full model's mesh moves; eyeballs never do.
        offsets = full.displacement(torch.randn(2, 115))
        assert float(offsets.abs().max()) > 1e-4
        assert float(offsets[:, full.mesh.no_displacement].abs().max()) == 0.0
    else:
        assert ablated.mesh.n_vertices < full.mesh.n_vertices / 2
        assert ablated.mesh.faces.shape[0] < full.mesh.faces.shape[0] / 3


def test_unknown_or_mistyped_settings_are_named():
    with pytest.raises(ConfigError, match="unknown setting 'tex_sise'"):
        FaceConfig.from_dict({"tex_sise": 128})
    with pytest.raises(ConfigError, match="'batch_size' = 'four' should be an integer"):
        FaceConfig.from_dict({"batch_size": "four"})
    with pytest.raises(ConfigError, match="'tex_size' = 100"):
        FaceConfig.from_dict({"tex_size": 100})
    # NaN (YAML .nan, JSON NaN) passes every range check; it would train a NaN face.
    with pytest.raises(ConfigError, match="config face: setting 'learning_rate' = nan should be a number, not NaN"):
        FaceConfig.from_dict({"learning_rate": float("nan")}, where="config face")
    # YAML 1.1 (Snakemake's config) reads 1e-4 as the string '1e-4': taken as the number it means.
    written = yaml.safe_load("a: 1e-4\nb: 1.0e3")
    assert written == {"a": "1e-4", "b": "1.0e3"}
    assert FaceConfig.from_dict({"learning_rate": written["a"]}).learning_rate == 1e-4
    assert FaceConfig.from_dict({"learning_rate": written["b"]}).learning_rate == 1e3
    with pytest.raises(ConfigError, match="'learning_rate' = '1e-4x' should be a number"):
        FaceConfig.from_dict({"learning_rate": "1e-4x"})
    with pytest.raises(ConfigError, match="'batch_size' = '1e3' should be an integer"):
        FaceConfig.from_dict({"batch_size": "1e3"})


def test_synthetic_stage_settings_layer_the_synthetic_overrides_as_the_workflow_does():
    from mega.settings import synthetic_stage_settings

    config = {"backend": "torch", "face": {"tex_size": 1024, "batch_size": 16},
              "hair": {"hair_epochs": 3000}, "synthetic": {"face": {"tex_size": 128}, "hair": {"hair_epochs": 80}}}
    assert synthetic_stage_settings(config, "face") == {"tex_size": 128, "batch_size": 16, "backend": "torch"}
    assert synthetic_stage_settings(config, "hair") == {"hair_epochs": 80}
    config["synthetic"]["face"]["backend"] = "cuda"
    assert synthetic_stage_settings(config, "face")["backend"] == "cuda"
    assert synthetic_stage_settings({}, "face") == {"backend": "auto"}


def test_batches_cover_each_epoch_and_depend_on_the_step_alone():
    epoch = [i for step in range(5) for i in batch_indices(step, 10, 2, seed=3)]
    assert sorted(epoch) == list(range(10))
    assert batch_indices(7, 10, 2, seed=3) == batch_indices(7, 10, 2, seed=3)
    assert batch_indices(5, 10, 2, seed=3) != batch_indices(0, 10, 2, seed=3)


# ----------------------------------------------------------------------------- training
def test_two_iterations_change_the_parameters_and_lower_the_loss(subject, tmp_path):
    union, head_dir = subject
    head = head_of(head_dir)
    metrics = train_face(union, head, tmp_path / "run", TINY_FACE, progress=False)
    log = pd.read_csv(tmp_path / "run" / "face" / "loss.csv")
    assert list(log["step"]) == [1, 2]
    # One batch holds all 15 train images, so both steps see the same images.
    assert log["total"][1] < log["total"][0]
    torch.manual_seed(TINY_FACE.seed)
    initial = NeuralFace(head, TINY_FACE)
    trained, _ = load_face(tmp_path / "run" / "face.pt", head)
    for name in ("diffuse_texture", "pixel_decoder.out.weight", "uv_encoding.table_u"):
        before, after = initial.state_dict()[name], trained.state_dict()[name]
        assert not torch.allclose(before, after), name
    for name in ("face.pt", "face/loss.png", "face/metrics.json", "face/checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert len(list((tmp_path / "run" / "face" / "val").glob("*.png"))) == min(TINY_FACE.val_views,
                                                                              metrics["val"]["n_images"])
    for split in ("val", "test"):
        assert metrics[split]["psnr_head"] > 5 and metrics[split]["depth_mae_face_mm"] >= 0


@pytest.mark.usefixtures("one_thread")
def test_resume_after_interruption_matches_the_uninterrupted_run(subject, tmp_path):
    union, head_dir = subject
    head = head_of(head_dir)
    config = TINY_FACE.replace(iterations=4, batch_size=4, checkpoint_every=2)
    train_face(union, head, tmp_path / "straight", config, progress=False)
    assert train_face(union, head, tmp_path / "resumed", config, progress=False, stop_after=3) == {"stopped_at": 3}
    assert not (tmp_path / "resumed" / "face.pt").exists()
    train_face(union, head, tmp_path / "resumed", config, progress=False)
    a = torch.load(tmp_path / "straight" / "face.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "face.pt", weights_only=False)
    for part in ("model", "frames"):
        for name, value in a[part].items():
            assert torch.allclose(value.float(), b[part][name].float(), rtol=0, atol=1e-6), name
    log_a = pd.read_csv(tmp_path / "straight" / "face" / "loss.csv")
    log_b = pd.read_csv(tmp_path / "resumed" / "face" / "loss.csv")
    assert list(log_b["step"]) == [1, 2, 3, 4]
    assert log_a["total"].tolist() == pytest.approx(log_b["total"].tolist(), rel=1e-5)
    # Other settings than the checkpoint's are refused, with what changed.
    with pytest.raises(TrainingError, match="tex_size: 16 → 32"):
        train_face(union, head, tmp_path / "resumed", config.replace(tex_size=32), progress=False)


def test_non_finite_loss_stops_and_names_step_and_loss(subject, tmp_path, monkeypatch):
    union, head_dir = subject
    config = TINY_FACE.replace(iterations=3)
    calls = []

    def dssim_nan_at_step_3(pred, target):
        calls.append(1)
        value = dssim(pred, target)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(losses, "dssim", dssim_nan_at_step_3)
    with pytest.raises(TrainingError, match="step 3: loss 'ssim' is nan.*last good checkpoint .* \\(step 2\\)"):
        train_face(union, head_of(head_dir), tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run" / "face.pt").exists()
    assert torch.load(tmp_path / "run" / "face" / "checkpoint.pt", weights_only=False)["step"] == 2


def test_cli_trains_and_reports(subject, tmp_path, capsys):
    union, head_dir = subject
    settings = json.dumps({"tex_size": 16, "disp_size": 16, "uv_encoding_size": 32, "batch_size": 8})
    args = ["train-face", str(union), "--out", str(tmp_path / "run"), "--head-model", str(head_dir),
            "--variant", "nodisp", "--ablations", str(ABLATIONS_FILE), "--iterations", "2", "--quiet"]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--settings", settings, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1  # the rule's threads reach torch
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "run" / "face" / "metrics.json").read_text())
    assert metrics["variant"] == "nodisp" and metrics["iterations"] == 2
    assert torch.load(tmp_path / "run" / "face.pt", weights_only=False)["config"]["displacement"] is False
    unknown = [*args[:6], "--variant", "nohair", "--ablations", str(ABLATIONS_FILE), "--settings", settings]
    assert main(unknown) == 2  # not in the ablations file
    assert main([*args, "--settings", '{"tex_size": 16,}']) == 2
    assert "--settings is not valid JSON" in capsys.readouterr().err


def test_without_depth_maps_the_depth_terms_switch_off(subject, tmp_path):
    union, head_dir = subject
    copy = tmp_path / "subject"
    shutil.copytree(union.parent, copy, symlinks=True)
    for depths in copy.glob("*/depths"):
        shutil.rmtree(depths)
    metrics = train_face(copy / union.name, head_of(head_dir), tmp_path / "run", TINY_FACE, progress=False)
    log = pd.read_csv(tmp_path / "run" / "face" / "loss.csv")
    assert log["depth"].isna().all() and log["normal"].isna().all()
    assert log["rgb"].notna().all() and log["total"].notna().all()
    assert "depth_mae_face_mm" not in metrics["val"] and metrics["val"]["psnr_head"] > 5


def test_white_on_scalp_leaves_the_skin_under_the_hair_untaught(subject):
    """The authors' target teaches every triangle under the hair white; ``white_on_scalp`` keeps
    white over the scalp and off the mesh, and puts no error and no gradient where the hair hides
    the other triangles (forehead, cheeks, neck under long hair)."""
    from mega.data.parsing import LABEL
    from mega.train.face import face_losses

    _, head_dir = subject
    model = NeuralFace(head_of(head_dir), TINY_FACE)
    as_if_trained(model)
    out = model(frame_batch(model), cameras())
    triangle_id = out["rast"][..., 3].long()
    on_scalp = torch.cat([torch.ones(1, dtype=torch.bool), model.mesh.scalp_faces])[triangle_id][:, None]
    on_other = (triangle_id > 0)[:, None] & ~on_scalp
    assert on_other.any() and (on_scalp & (triangle_id > 0)[:, None]).any()
    # Everything is hair: the target is white everywhere under the authors' rule.
    labels = torch.full(triangle_id.shape, LABEL["hair"], dtype=torch.int64)
    image = torch.full_like(out["rgb"], 0.3)
    grads = {}
    for rule in ("white", "white_on_scalp"):
        rgb = out["rgb"].detach().requires_grad_()
        terms = face_losses(model, {**out, "rgb": rgb}, {"image": image, "parsing": labels},
                            FaceConfig(**{**TINY_FACE.to_dict(), "hair_target": rule}))
        (grad,) = torch.autograd.grad(terms["rgb"], rgb)
        grads[rule] = grad.abs().sum(1, keepdim=True)
    assert bool((grads["white"][on_other] > 0).any())
    assert bool((grads["white_on_scalp"][on_other] == 0).all())
    over_scalp = on_scalp & (triangle_id > 0)[:, None] & (out["rgb"].detach() < 0.999).any(1, keepdim=True)
    assert torch.equal(grads["white_on_scalp"][over_scalp], grads["white"][over_scalp])
    assert bool((grads["white_on_scalp"][over_scalp] > 0).all())
    with pytest.raises(ConfigError, match="hair_target"):
        FaceConfig(hair_target="black").check()


# ----------------------------------------------------------------------------- the shared loop, data policy
def test_a_checkpoint_older_than_a_setting_resumes_where_the_setting_keeps_its_default(subject, tmp_path):
    """A checkpoint written before a setting existed lacks its key: it resumes while the setting has
    its default (the behaviour the checkpoint was trained under), and is refused otherwise."""
    union, head_dir = subject
    head = head_of(head_dir)
    config = TINY_FACE.replace(iterations=3, checkpoint_every=1)
    assert config.w_ssim == FaceConfig.defaults()["w_ssim"] and config.tex_size != FaceConfig.defaults()["tex_size"]
    assert train_face(union, head, tmp_path / "run", config, progress=False, stop_after=2) == {"stopped_at": 2}
    path = tmp_path / "run" / "face" / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)

    def as_if_written_without(key):
        state = {**saved, "fingerprint": {k: v for k, v in saved["fingerprint"].items() if k != key}}
        torch.save(state, path)

    as_if_written_without("tex_size")  # trained at 16, not at the default
    with pytest.raises(TrainingError, match=f"tex_size: {FaceConfig.defaults()['tex_size']} → 16"):
        train_face(union, head, tmp_path / "run", config, progress=False)
    as_if_written_without("w_ssim")  # trained at the default
    train_face(union, head, tmp_path / "run", config, progress=False)
    assert list(pd.read_csv(tmp_path / "run" / "face" / "loss.csv")["step"]) == [1, 2, 3]


def test_changed_settings_restart_when_the_workflow_asks(subject, tmp_path):
    union, head_dir = subject
    head = head_of(head_dir)
    train_face(union, head, tmp_path / "run", TINY_FACE, progress=False)
    first = torch.load(tmp_path / "run" / "face.pt", weights_only=False)
    changed = TINY_FACE.replace(w_ssim=0.5, iterations=3)
    with pytest.raises(TrainingError, match="w_ssim: 0.2 → 0.5"):
        train_face(union, head, tmp_path / "run", changed, progress=False)
    metrics = train_face(union, head, tmp_path / "run", changed, progress=False, on_settings_change="restart")
    log = pd.read_csv(tmp_path / "run" / "face" / "loss.csv")
    assert list(log["step"]) == [1, 2, 3] and metrics["iterations"] == 3
    # Started over: step 1 of the new run is step 1 of the old one (same seed and batch), not a resumption.
    second = torch.load(tmp_path / "run" / "face.pt", weights_only=False)
    assert second["config"]["w_ssim"] == 0.5 and first["config"]["w_ssim"] == 0.2


def test_steps_follow_the_epochs_and_the_subjects_size():
    config = FaceConfig(epochs=49, batch_size=16)
    assert config.steps_for(2000) == 49 * 125
    assert FaceConfig(epochs=15, batch_size=4).steps_for(405) == 15 * 101
    assert FaceConfig(iterations=7).steps_for(405) == 7


def test_frozen_groups_keep_their_values(subject, tmp_path):
    from mega.data.gaussian_avatars import SubjectDataset
    from mega.face.frames import FrameParameters
    from mega.train.face import FaceStage, frame_parameters_of
    from mega.train.loop import LoopSettings, train

    union, head_dir = subject
    torch.manual_seed(0)
    model = NeuralFace(head_of(head_dir), TINY_FACE)
    frames = FrameParameters(frame_parameters_of(union))
    stage = FaceStage(model, frames, TINY_FACE, frozen=("displacement", "flame_expr", "flame_shape"))
    before = {k: v.clone() for k, v in {**model.state_dict(), **frames.state_dict()}.items()}
    settings = LoopSettings(steps=2, batch_size=4, seed=1, checkpoint_every=2)
    train(stage, SubjectDataset(union, "train"), tmp_path / "work", settings, {}, torch.device("cpu"), progress=False)
    after = {**model.state_dict(), **frames.state_dict()}
    for name, value in before.items():
        frozen = name.startswith("displacement_decoder.") or name in ("tables.expr", "shape")
        if value.is_floating_point() and "running" not in name:
            assert torch.equal(value, after[name]) == frozen, name
    with pytest.raises(ConfigError, match="unknown face parameter groups \\['hair'\\]"):
        FaceStage(model, frames, TINY_FACE, frozen=("hair",))


def test_workers_draw_the_same_batches_as_the_main_process(subject, tmp_path):
    union, head_dir = subject
    head = head_of(head_dir)
    config = TINY_FACE.replace(batch_size=4, iterations=2, val_views=0)
    train_face(union, head, tmp_path / "main", config, progress=False)
    train_face(union, head, tmp_path / "workers", config.replace(data_workers=1), progress=False)
    a = pd.read_csv(tmp_path / "main" / "face" / "loss.csv")
    b = pd.read_csv(tmp_path / "workers" / "face" / "loss.csv")
    assert a["total"].tolist() == pytest.approx(b["total"].tolist(), rel=1e-5)


def copy_subject(union: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "subject"
    shutil.copytree(union.parent, copy, symlinks=True)
    return copy / union.name


def test_missing_parsing_is_an_error_unless_allowed(subject, tmp_path, caplog):
    union, head_dir = subject
    copy = copy_subject(union, tmp_path)
    head = head_of(head_dir)
    sequences = sorted(p for p in copy.parent.glob("*/parsing"))
    shutil.rmtree(sequences[0])  # one sequence without parsing: an error, allowed or not
    allowed = TINY_FACE.replace(require_parsing=False)
    for config in (TINY_FACE, allowed):
        with pytest.raises(DataError, match=f"{sequences[0]}: folder not found, while other sequences"):
            train_face(copy, head, tmp_path / "run", config, progress=False)
    for parsing in sequences[1:]:
        shutil.rmtree(parsing)
    with pytest.raises(DataError, match="the subject has no face parsing.*require_parsing: false"):
        train_face(copy, head, tmp_path / "run", TINY_FACE, progress=False)
    with caplog.at_level("WARNING"):
        metrics = train_face(copy, head, tmp_path / "run", allowed, progress=False)
    assert "has no face parsing" in caplog.text and metrics["val"]["n_images"] > 0


def test_val_is_rendered_with_the_tracked_expression_and_pose(subject):
    from mega.data.gaussian_avatars import SubjectDataset, collate_samples
    from mega.eval.face import driving_parameters
    from mega.face.frames import FrameParameters
    from mega.train.face import frame_parameters_of

    union, _ = subject
    frames = FrameParameters(frame_parameters_of(union))
    with torch.no_grad():
        frames.tables["expr"].add_(1.0)  # as if training had refined every expression
        frames.shape.add_(0.5)
    batch = collate_samples([SubjectDataset(union, "val")[0]])
    tracked = driving_parameters(frames, batch, refined=False)
    refined = driving_parameters(frames, batch, refined=True)
    assert torch.equal(tracked["expr"], batch["flame"]["expr"])
    assert torch.equal(refined["expr"], batch["flame"]["expr"] + 1.0)
    assert torch.equal(tracked["shape"], frames.shape) and torch.equal(refined["shape"], frames.shape)


def test_sixty_steps_learn_the_face(subject, tmp_path):
    """End to end on the tiny subject: 60 steps against a 1-step baseline of the same seed. On
    this subject training reaches about +6 dB on the val view, +5.4 dB on the held-out sequence,
    and 39% (val) and 19% (test) less depth error (measured); a model whose loss misses the
    textures or the mesh stays near the baseline."""
    union, head_dir = subject
    head = head_of(head_dir)
    config = TINY_FACE.replace(batch_size=5, lr_pixel_decoder=0.003, checkpoint_every=1000, val_views=0)
    baseline = train_face(union, head, tmp_path / "one", config.replace(iterations=1), progress=False)
    trained = train_face(union, head, tmp_path / "sixty", config.replace(iterations=60), progress=False)
    for split, depth_ratio in (("val", 0.75), ("test", 0.9)):
        assert trained[split]["psnr_head"] > baseline[split]["psnr_head"] + 4.0, split
        assert trained[split]["depth_mae_face_mm"] < depth_ratio * baseline[split]["depth_mae_face_mm"], split
    assert trained["test"]["psnr_head"] > 16.5
