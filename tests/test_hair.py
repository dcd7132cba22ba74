"""The Gaussian hair, its densification, the blend and the canonical-hair and joint stages."""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mega import losses
from mega.blend import blend, blend_renders, evaluation_blend_text, occlusion_mask, soften
from mega.cli import main
from mega.data.camera import Camera
from mega.data.synth import synthesized_union
from mega.errors import ConfigError, DataError, TrainingError
from mega.face.config import FaceConfig
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.hair.deform import DeformationField, posed_hair
from mega.hair.densify import Densifier, DensifyState, step_statistics
from mega.hair.model import GaussianHair, sample_scalp_points
from mega.hair.render import render_hair
from mega.render.gaussians import quaternion_to_matrix
from mega.train.checkpoint import save_checkpoint
from mega.train.face import train_face
from mega.train.hair import train_hair
from mega.train.joint import load_avatar, train_joint

TINY_SUBJECT = ["--width", "28", "--height", "40", "--sequences", "2", "--frames", "1", "--quiet"]
TINY_FACE = FaceConfig(tex_size=16, disp_size=16, uv_encoding_size=32, batch_size=15, iterations=2,
                       learning_rate=0.01, checkpoint_every=1, val_views=2, data_workers=0)
TINY_HAIR = HairConfig(init_on_scalp=150, init_off_scalp=300, hair_iterations=2, hair_batch_size=15,
                       joint_iterations=2, joint_batch_size=15, deform_layers=(16, 16), checkpoint_every=1,
                       val_views=2, data_workers=0, densify_from_images=1_000_000)


def tiny_subject(root: Path, *synth_options: str):
    """(UNION folder, head model) of a 28 × 40 synthetic subject made in ``root`` (``synth_options``:
    more of `mega synth`'s, e.g. its hairstyle)."""
    assert main(["head-model", "--out", str(root / "head_model")]) == 0
    assert main(["synth", str(root / "synthetic"), *TINY_SUBJECT, *synth_options]) == 0
    return synthesized_union(root / "synthetic"), load_head_model_folder(root / "head_model")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(UNION folder, head model, run folder with face.pt, hair_rigid.npz) of a 28 × 40 subject."""
    root = tmp_path_factory.mktemp("hair")
    union, head = tiny_subject(root)
    train_face(union, head, root / "run", TINY_FACE, progress=False)
    rigid = root / "hair_rigid.npz"
    assert main(["hair-rigid", str(union), "--head-model", str(root / "head_model"), "--out", str(rigid)]) == 0
    return union, head, root / "run", rigid


@pytest.fixture(scope="module")
def canonical_hair(trained, tmp_path_factory) -> Path:
    """hair.pt of two steps of the canonical-hair stage."""
    union, head, run, rigid = trained
    out = tmp_path_factory.mktemp("canonical")
    train_hair(union, run / "face.pt", rigid, out, head, TINY_HAIR, progress=False)
    return out / "hair.pt"


def a_camera(width=32, height=32) -> Camera:
    K = torch.tensor([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
    return Camera(K, torch.eye(4), width, height)


# ----------------------------------------------------------------------------- the model
def test_scalp_samples_lie_on_and_just_off_the_scalp():
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    scalp_faces = torch.tensor([True, False])  # the second triangle reaches off the scalp
    points = sample_scalp_points(vertices, faces, scalp_faces, 200, 300, 0.02, torch.Generator().manual_seed(0))
    on, off = points[:200], points[200:]
    assert torch.allclose(on[:, 2], torch.zeros(200)) and bool((on[:, :2].sum(1) <= 1 + 1e-6).all())
    # Off-surface points move along the triangle's normal (±z), by at most 2 cm.
    assert bool((off[:, 2].abs() <= 0.02).all()) and off[:, 2].abs().max() > 0.01


def test_deformation_field_is_the_identity_at_start():
    hair = GaussianHair.from_points(torch.randn(50, 3) * 0.05, torch.rand(50, 3), 0.1, 3)
    field = DeformationField(layers=(32, 32))
    expr = torch.randn(2, 100)
    offsets = field(hair.params["means"], expr)
    assert set(offsets) == {"means", "quats", "scales", "opacities", "sh0"}
    rotation, translation = torch.eye(3).repeat(2, 1, 1), torch.zeros(2, 3)
    rigid_only = posed_hair(hair, rotation, translation)
    deformed = posed_hair(hair, rotation, translation, offsets)
    for name in rigid_only:
        assert torch.equal(rigid_only[name], deformed[name]), name
    # ... and it is trainable: the last layer receives a gradient.
    sum(v.sum() for v in offsets.values()).backward()
    assert field.last.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("degree", [0, 1])
def test_hair_that_is_not_trained_carries_only_the_coefficients_it_renders(trained, canonical_hair, degree):
    from mega.avatar import Avatar, RigidTable
    from mega.data.gaussian_avatars import collate_samples
    from mega.train.face import load_face
    from mega.train.hair import open_hair_split
    union, head, run, rigid_path = trained
    face, frames = load_face(run / "face.pt", head)
    hair = GaussianHair(0, 3)
    hair.load_state_dict(torch.load(canonical_hair, weights_only=False)["hair"])
    hair.active_degree.fill_(degree)
    with torch.no_grad():
        hair.params["shN"].normal_(0, 0.2)  # the higher coefficients are not what is drawn
    avatar = Avatar(face, hair, DeformationField(layers=(16, 16)), TINY_HAIR)
    batch = collate_samples([open_hair_split(union, "train")[i] for i in (0, 5)])
    index = batch["timestep_index"]
    flame, (rotation, translation) = frames(index), RigidTable.from_file(rigid_path)(index)
    cameras = batch["camera"]
    trained_out = avatar(flame, cameras, rotation, translation)
    assert trained_out["hair"]["alpha"].amax() > 0.1  # the hair is in view
    assert trained_out["gaussians"]["sh"].shape[2] == 16  # trained: all, for 3DGS's optimiser state
    hair.requires_grad_(False)  # as the joint stage freezes it
    frozen_out = avatar(flame, cameras, rotation, translation)
    assert frozen_out["gaussians"]["sh"].shape[2] == (degree + 1) ** 2
    assert torch.equal(frozen_out["rgb"], trained_out["rgb"])
    # Exports still take every coefficient.
    assert avatar.hair_of(flame, rotation, translation)[0]["sh"].shape[2] == 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_softplus_is_torchs(dtype):
    from mega.hair.deform import softplus
    torch.manual_seed(0)
    # Both sides of torch's threshold (20), far tails, zero, and the spread of hidden activations.
    x = torch.cat([torch.randn(5001) * 10, torch.tensor([0.0, 19.99, 20.0, 20.01, -30.0, 88.0, -100.0, 1e4, -1e4])])
    x = x.to(dtype).reshape(-1, 10).requires_grad_()
    got, want = softplus(x), torch.nn.functional.softplus(x)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)  # the table holds torch's own bfloat16 values
    else:
        assert torch.allclose(got, want, rtol=4e-7, atol=1e-6)
    grad = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0])


def test_deformation_field_in_bfloat16_follows_the_float32_field(monkeypatch):
    torch.manual_seed(0)
    exact = DeformationField(layers=(64, 64), scale=1.0)
    torch.nn.init.normal_(exact.last.weight, std=0.1)
    fast = DeformationField(layers=(64, 64), scale=1.0, precision="bfloat16")
    fast.load_state_dict(exact.state_dict())
    means, expr = torch.randn(300, 3) * 0.1, torch.randn(3, 100)
    want, got = exact(means, expr), fast(means, expr)
    for name in want:
        assert got[name].dtype == torch.float32 and got[name].shape == want[name].shape
        error = (got[name] - want[name]).abs().max() / want[name].abs().max()
        # bfloat16 keeps 8 bits of mantissa: close to the float32 field, but not it (the
        # products really ran in bfloat16).
        assert 0 < error < 3e-2, (name, float(error))
    sum(v.square().sum() for v in got.values()).backward()
    assert fast.hidden[0].weight.grad.dtype == torch.float32 and fast.hidden[0].weight.grad.abs().sum() > 0
    # auto: bfloat16 only on a CPU with bfloat16 units, float32 elsewhere.
    from mega.hair import deform
    monkeypatch.setattr(deform, "cpu_has_native_bfloat16", lambda: False)
    assert not deform.deformation_autocast("auto", torch.device("cpu"))
    auto = DeformationField(layers=(64, 64), scale=1.0, precision="auto")
    auto.load_state_dict(exact.state_dict())
    assert torch.equal(auto(means, expr)["means"], want["means"])
    monkeypatch.setattr(deform, "cpu_has_native_bfloat16", lambda: True)
    assert deform.deformation_autocast("auto", torch.device("cpu"))
    assert not deform.deformation_autocast("auto", torch.device("cuda"))
    assert not deform.deformation_autocast("float32", torch.device("cpu"))
    with pytest.raises(Exception, match="deform_precision"):
        HairConfig.from_dict({"deform_precision": "half"}, where="config.yaml hair")


def test_a_rotated_frame_rotates_positions_and_orientations():
    torch.manual_seed(0)
    hair = GaussianHair.from_points(torch.randn(20, 3) * 0.05, torch.rand(20, 3), 0.1, 0)
    with torch.no_grad():
        hair.params["quats"].copy_(torch.randn(20, 4))
        hair.params["scales"].copy_(torch.randn(20, 3) * 0.3 - 6)
    angle = 0.4
    R = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    t = torch.tensor([0.01, -0.02, 0.03])
    posed = posed_hair(hair, R[None], t[None])
    canonical = hair.activated()
    assert torch.allclose(posed["means"][0], canonical["means"] @ R.T + t, atol=1e-6)
    cov = lambda q, s: losses.covariances(quaternion_to_matrix(q), s)  # noqa: E731
    assert torch.allclose(cov(posed["quats"][0], posed["scales"][0]),
                          R @ cov(canonical["quats"], canonical["scales"]) @ R.T, atol=1e-12)


# ----------------------------------------------------------------------------- densification
def optimizer_of(hair: GaussianHair) -> torch.optim.Adam:
    return torch.optim.Adam([{"name": n, "params": [p], "lr": 1e-3} for n, p in hair.params.items()], eps=1e-15)


def test_densification_clones_splits_and_prunes():
    # Four Gaussians in front of the camera: 0 small and 1 large with a large screen-space
    # gradient, 2 quiet, 3 transparent.
    means = torch.tensor([[0.0, 0, 1], [0.05, 0, 1], [-0.05, 0, 1], [0, 0.05, 1]])
    hair = GaussianHair.from_points(means, torch.rand(4, 3), 0.5, 0)
    with torch.no_grad():
        hair.params["scales"].copy_(torch.log(torch.tensor([[1e-4] * 3, [0.01] * 3, [1e-4] * 3, [1e-4] * 3])))
        hair.params["opacities"][3] = -10.0  # sigmoid ≈ 4.5e-5 < 0.005
    optimizer = optimizer_of(hair)
    for p in hair.params.values():  # an Adam state to carry over
        p.grad = torch.ones_like(p)
    optimizer.step()
    config = HairConfig(densify_from_images=1, densify_every_images=2, opacity_reset_every_images=1000,
                        percent_dense=0.01)
    densifier = Densifier(config, batch_size=1, scene_extent_m=1.0, state=DensifyState(4), total_steps=100)
    means2d = [torch.zeros(4, 2)]
    means2d[0].grad = torch.tensor([[1.0, 0], [1.0, 0], [0, 0], [0, 0]]) * 1e-3  # pixels → NDC: × 16
    radii = torch.tensor([[3, 3, 3, 3]])
    assert not densifier.after_backward(1, hair, optimizer, means2d, radii, 32, 32)  # accumulate only
    changed = densifier.after_backward(2, hair, optimizer, means2d, radii, 32, 32)
    assert changed
    # 0 cloned (+1), 1 split in two (+1), 3 pruned (−1): 5 Gaussians.
    assert hair.n == 5
    assert bool((torch.sigmoid(hair.params["opacities"]) > 0.005).all())
    for group in optimizer.param_groups:
        (p,) = group["params"]
        assert p is hair.params[group["name"]]
        assert optimizer.state[p]["exp_avg"].shape == p.shape
    assert densifier.state.grad2d.shape == (5,) and float(densifier.state.grad2d.abs().sum()) == 0


def test_opacity_reset_follows_the_schedule_but_not_near_the_end():
    hair = GaussianHair.from_points(torch.tensor([[0.0, 0, 1], [0.1, 0, 1]]), torch.rand(2, 3), 0.8, 0)
    config = HairConfig(densify_from_images=1000, densify_every_images=1000, opacity_reset_every_images=4)
    optimizer = optimizer_of(hair)
    densifier = Densifier(config, batch_size=1, scene_extent_m=1.0, state=DensifyState(2), total_steps=10)
    means2d, radii = [torch.zeros(2, 2)], torch.tensor([[3, 3]])
    means2d[0].grad = torch.zeros(2, 2)
    densifier.after_backward(4, hair, optimizer, means2d, radii, 32, 32)
    assert torch.allclose(torch.sigmoid(hair.params["opacities"]), torch.full((2,), 0.01), atol=1e-6)
    with torch.no_grad():
        hair.params["opacities"].fill_(2.0)
    densifier.after_backward(8, hair, optimizer, means2d, radii, 32, 32)  # 8 + 4 > 10: no reset
    assert torch.allclose(hair.params["opacities"], torch.full((2,), 2.0))



@pytest.mark.parametrize("prune_large_from_images, pruned_at", [(0, 12), (2, 4)])
def test_large_gaussians_are_pruned_after_the_reset_interval_or_from_their_own_start(prune_large_from_images,
                                                                                      pruned_at):
    # 0 is 0.2 × the extent, larger than prune_scale (0.1); 1 is small. 3DGS prunes 0 only after
    # the first reset interval (10 steps); prune_large_from_images starts it on its own.
    hair = GaussianHair.from_points(torch.tensor([[0.0, 0, 1], [0.1, 0, 1]]), torch.rand(2, 3), 0.8, 0)
    with torch.no_grad():
        hair.params["scales"].copy_(torch.log(torch.tensor([[0.2, 0.01, 0.01], [1e-3] * 3])))
    config = HairConfig(densify_from_images=1, densify_every_images=4, opacity_reset_every_images=10,
                        densify_grad_threshold=1.0, prune_large_from_images=prune_large_from_images)
    optimizer = optimizer_of(hair)
    densifier = Densifier(config, batch_size=1, scene_extent_m=1.0, state=DensifyState(2), total_steps=100)
    for step in range(1, 13):
        means2d, radii = [torch.zeros(hair.n, 2)], torch.full((1, hair.n), 3)
        means2d[0].grad = torch.zeros(hair.n, 2)
        densifier.after_backward(step, hair, optimizer, means2d, radii, 32, 32)
        assert hair.n == (1 if step >= pruned_at else 2), step
    assert float(hair.params["scales"].exp().max()) < 0.1
# ----------------------------------------------------------------------------- blending
def test_blending_takes_whichever_is_in_front_with_a_soft_seam():
    H, W = 9, 12
    face_depth = torch.full((1, 1, H, W), 1.0)
    face_mask = torch.ones(1, 1, H, W, dtype=torch.bool)
    face_mask[..., :, 10:] = False  # no mesh on the right: hair counts as in front
    hair_near_z = torch.full((1, 1, H, W), 0.9)  # left half: hair in front of the face
    hair_near_z[..., :, 5:10] = 1.1  # middle: behind the face
    occlusion = occlusion_mask(hair_near_z, face_depth, face_mask)
    assert occlusion[0, 0, :, :5].eq(1).all() and occlusion[0, 0, :, 5:10].eq(0).all()
    assert occlusion[0, 0, :, 10:].eq(1).all()
    face_rgb = torch.zeros(1, 3, H, W)
    hair_rgb = torch.ones(1, 3, H, W)
    soft = soften(occlusion)
    rgb, weight = blend(face_rgb, hair_rgb, torch.ones(1, 1, H, W), soft)
    row = rgb[0, 0, 4]
    assert row[0] == pytest.approx(1.0, abs=1e-6) and row[7] == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < float(row[4]) < 0.95 and 0.05 < float(row[5]) < 0.95  # the seam is soft
    assert bool((row[:5].diff() <= 1e-6).all())
    # Pixels without a significant Gaussian (near-z = inf) are never hair.
    assert occlusion_mask(torch.full((1, 1, H, W), math.inf), face_depth, face_mask).eq(0).all()


def test_over_compositing_lays_translucent_hair_once_where_the_authors_blend_lets_white_through():
    g = torch.Generator().manual_seed(0)
    colour = torch.rand(2, 3, 4, 5, generator=g) * 0.3  # dark hair
    alpha = torch.rand(2, 1, 4, 5, generator=g) * 0.8 + 0.1
    hair_rgb = alpha * colour + (1 - alpha)  # the hair rendered over white, as render_hair returns it
    face = torch.rand(2, 3, 4, 5, generator=g) * 0.5 + 0.2
    in_front = torch.ones(2, 1, 4, 5)
    over, weight = blend(face, hair_rgb, alpha, in_front, "over")
    torch.testing.assert_close(over, alpha * colour + (1 - alpha) * face)  # the hair once over the face
    torch.testing.assert_close(weight, alpha)
    # Over the white background the blend is the hair's render itself, as the hair stage fits it.
    torch.testing.assert_close(blend(torch.ones_like(face), hair_rgb, alpha, in_front, "over")[0], hair_rgb)
    # The authors' eq. 7 shows translucent hair with α² of its colour and part of the white.
    authors, _ = blend(face, hair_rgb, alpha, in_front, "authors")
    torch.testing.assert_close(authors, alpha ** 2 * colour + alpha * (1 - alpha) + (1 - alpha) * face)
    assert bool((authors > over).all())
    # Opaque hair, or hair behind the face, is the same image either way.
    ones, zeros = torch.ones_like(alpha), torch.zeros_like(alpha)
    for a, occ in ((ones, in_front), (alpha, zeros)):
        rgb = a * colour + (1 - a)
        torch.testing.assert_close(blend(face, rgb, a, occ, "over")[0], blend(face, rgb, a, occ, "authors")[0])
    with pytest.raises(ConfigError, match="hair_compositing"):
        HairConfig(hair_compositing="under").check("hair")


def test_gsdepth_tests_the_alpha_depth_and_evaluation_cleans_the_mask():
    H, W = 9, 9
    face = {"rgb": torch.zeros(1, 3, H, W), "mask": torch.ones(1, 1, H, W, dtype=torch.bool),
            "depth": torch.full((1, 1, H, W), 1.0)}
    near_z = torch.full((1, 3, H, W), 0.9)
    near_z[:, 1] = 1.2  # the 2nd significant Gaussian is behind the face
    hair = {"rgb": torch.ones(1, 3, H, W), "alpha": torch.ones(1, 1, H, W), "near_z": near_z,
            "depth": torch.full((1, 1, H, W), 1.1)}  # alpha-weighted depth: behind the face
    assert blend_renders(face, hair, "near_z")["occlusion"].eq(1).all()
    assert blend_renders(face, hair, "alpha_depth")["occlusion"].eq(0).all()
    assert blend_renders(face, hair, "near_z", evaluation=True)["occlusion"].eq(0).all()  # 2nd near-z
    # A lone pixel is opened away at evaluation.
    near_z[:, 1] = 1.2
    near_z[:, 1, 4, 4] = 0.9
    assert blend_renders(face, hair, "near_z", evaluation=True)["occlusion"].eq(0).all()


def test_the_evaluations_cleaning_has_the_sizes_asked_and_1_leaves_a_step_out():
    H, W = 12, 12
    face_depth, face_mask = torch.full((1, 1, H, W), 1.0), torch.ones(1, 1, H, W, dtype=torch.bool)
    near_z = torch.full((1, 1, H, W), 1.2)
    near_z[..., :, 2:4] = 0.9  # a strand two pixels wide in front of the face
    near_z[..., 4:, 5:] = 0.9  # a block with a one-pixel gap
    near_z[..., 7, 8] = 1.2
    opened_closed = occlusion_mask(near_z, face_depth, face_mask, evaluation=True)
    assert opened_closed[0, 0, :, 2:4].eq(0).all()  # the 3 x 3 opening removes the strand
    assert opened_closed[0, 0, 7, 8] == 1  # the closing fills the gap
    kept = occlusion_mask(near_z, face_depth, face_mask, evaluation=True, open_px=1, close_px=1)
    assert torch.equal(kept, occlusion_mask(near_z, face_depth, face_mask))
    only_closed = occlusion_mask(near_z, face_depth, face_mask, evaluation=True, open_px=1)
    assert only_closed[0, 0, :, 2:4].eq(1).all() and only_closed[0, 0, 7, 8] == 1
    # The metrics files say which blend scored them.
    assert evaluation_blend_text(1, 3, 5, 5, 1.5) == ("2nd near-z, occlusion mask opened 3 x 3 and closed 5 x 5, "
                                                      "blurred 5 x 5 at sigma 1.5 px (the authors' evaluation)")
    assert evaluation_blend_text(0, 1, 1, 3, 0.375) == ("1st near-z, occlusion mask not cleaned, blurred 3 x 3 at sigma "
                                                        "0.375 px (the authors' evaluation at other pixel sizes)")
    # The hair settings take odd sizes only.
    for name, value in (("occlusion_open_px", 2), ("occlusion_close_px", 0), ("blur_kernel", 4)):
        with pytest.raises(ConfigError, match=f"'{name}' must be an odd number of pixels"):
            HairConfig(**{name: value}).check("hair settings")
    with pytest.raises(ConfigError, match="'blur_sigma' must be positive"):
        HairConfig(blur_sigma=0).check("hair settings")


def test_allgs_composites_hair_behind_the_head_that_early_stopping_drops():
    # A Gaussian in front and one 30 cm behind it on the same ray.
    gaussians = {"means": torch.tensor([[[0.0, 0, 1.0], [0.0, 0, 1.3]]]),
                 "quats": torch.tensor([[[1.0, 0, 0, 0]] * 2]), "scales": torch.full((1, 2, 3), 0.05),
                 "opacities": torch.tensor([[0.5, 0.9]]), "sh": torch.zeros(1, 2, 1, 3)}
    cameras = Camera(a_camera().intrinsics[None], torch.eye(4)[None], 32, 32)
    stopped = render_hair(gaussians, cameras, 0, early_stop_gap_m=0.1)
    everything = render_hair(gaussians, cameras, 0, early_stop_gap_m=math.inf)
    centre = (0, 0, 16, 16)
    assert stopped["alpha"][centre] == pytest.approx(0.5, abs=0.05)
    assert everything["alpha"][centre] > stopped["alpha"][centre] + 0.3


def some_gaussians(n: int, scale_m: tuple[float, float], seed: int = 0, spread_m: float = 0.03) -> dict:
    """n random Gaussians of sizes in ``scale_m``, ``spread_m`` about a point 1 m in front of the
    camera (:func:`a_camera`: 40 pixels a metre there), one frame."""
    generator = torch.Generator().manual_seed(seed)
    low, high = scale_m
    return {"means": torch.randn(1, n, 3, generator=generator) * spread_m + torch.tensor([0.0, 0, 1]),
            "quats": torch.randn(1, n, 4, generator=generator),
            "scales": torch.rand(1, n, 3, generator=generator) * (high - low) + low,
            "opacities": torch.rand(1, n, generator=generator) * 0.9, "sh": torch.rand(1, n, 1, 3, generator=generator)}


def test_supersampled_hair_approaches_the_pixel_integral_at_the_images_size():
    # Strand-thin Gaussians (0.3–1 mm, a few hundredths of a pixel here): drawn at the image's
    # size each is dilated to a pixel at its full opacity; drawn larger and box-filtered, as a
    # camera integrates, the images converge.
    gaussians = some_gaussians(300, (3e-4, 1e-3))
    cameras = Camera(a_camera(40, 48).intrinsics[None], torch.eye(4)[None], 40, 48)
    plain, twice, fine = (render_hair(gaussians, cameras, 0, supersample=s) for s in (1, 2, 8))
    for name in ("rgb", "alpha"):
        assert twice[name].shape == plain[name].shape == fine[name].shape
        error_plain = (plain[name] - fine[name]).abs().mean()
        assert (twice[name] - fine[name]).abs().mean() < 0.5 * error_plain, name
    # Near-z is the block's nearest significant Gaussian, inf where it has none; means2d and
    # radii stay in the drawn image's pixels, whose size densification reads.
    drawn = render_hair(gaussians, cameras.resized(80, 96), 0)
    nearest = -torch.nn.functional.max_pool2d(-drawn["near_z"], 2)
    assert torch.equal(twice["near_z"], nearest) and bool(torch.isinf(twice["near_z"]).any())
    assert twice["render_size"] == (80, 96) and plain["render_size"] == (40, 48)
    assert torch.allclose(twice["means2d"][0], 2 * plain["means2d"][0], atol=1e-4)


def test_antialiased_hair_covers_thin_strands_as_the_pixel_integral_does():
    # Strands 8 cm long (3 pixels) and 1 mm thin (0.04 pixel): classic 3DGS draws each a pixel wide
    # at its full opacity, so the image's coverage depends on its resolution; antialiased keeps each
    # Gaussian's mass, so the image at its size is what the 8× image box-filtered down is.
    gaussians = some_gaussians(200, (1e-3, 1e-3), spread_m=0.15)
    gaussians["scales"][..., 0] = 0.08
    cameras = Camera(a_camera(40, 48).intrinsics[None], torch.eye(4)[None], 40, 48)
    error = {}
    for mode in ("classic", "antialiased"):
        plain, fine = (render_hair(gaussians, cameras, 0, supersample=s, rasterize_mode=mode) for s in (1, 8))
        error[mode] = (plain["alpha"] - fine["alpha"]).abs().mean()
        if mode == "antialiased":
            assert plain["alpha"].mean() == pytest.approx(float(fine["alpha"].mean()), rel=0.1)
    assert error["antialiased"] < 0.1 * error["classic"]
    # A disc seen edge-on covers no area: its opacity goes to zero with a finite gradient.
    disc = {"means": torch.tensor([[[0.0, 0, 1]]]), "quats": torch.tensor([[[1.0, 0, 0, 0]]]),
            "scales": torch.tensor([[[0.05, 0.0, 0.05]]], requires_grad=True), "opacities": torch.tensor([[0.9]]),
            "sh": torch.ones(1, 1, 1, 3)}
    cameras = Camera(a_camera().intrinsics[None], torch.eye(4)[None], 32, 32)
    render_hair(disc, cameras, 0, rasterize_mode="antialiased")["alpha"].sum().backward()
    assert torch.isfinite(disc["scales"].grad).all()
    with pytest.raises(ConfigError, match="hair_rasterize_mode"):
        HairConfig.from_dict({"hair_rasterize_mode": "mip"}, where="config.yaml hair")


def test_densification_reads_supersampled_gradients_in_the_units_of_the_plain_render():
    # Large smooth Gaussians look the same drawn at 1× or 2×; their screen-space gradients in
    # normalised device coordinates, which the 2e-4 threshold compares, must be too.
    gaussians = some_gaussians(20, (0.04, 0.08), seed=1, spread_m=0.2)
    cameras = Camera(a_camera(40, 48).intrinsics[None], torch.eye(4)[None], 40, 48)
    target = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    statistics = []
    for supersample in (1, 2):
        leaves = {k: v.clone().requires_grad_() for k, v in gaussians.items()}
        out = render_hair(leaves, cameras, 0, supersample=supersample)
        ((out["rgb"] - target) ** 2).mean().backward()
        hair = GaussianHair.from_points(gaussians["means"][0], torch.rand(20, 3), 0.5, 0)
        densifier = Densifier(HairConfig(), 1, 1.0, DensifyState(20), 100)
        width, height = out["render_size"]
        statistics.append(step_statistics(densifier.strategy, hair.params, densifier.state, 1.0, out["means2d"],
                                          out["radii"], width, height)["grad2d"].clone())
    plain, twice = statistics
    seen = plain > plain.max() * 0.05
    assert seen.sum() >= 5
    # Per Gaussian the two agree to the sampling's differences; read in the 1× image's pixels
    # instead, the supersampled ones would be halved.
    ratio = twice[seen] / plain[seen]
    assert 0.9 < float(ratio.median()) < 1.1 and 0.6 < float(ratio.min()) and float(ratio.max()) < 1.6


# ----------------------------------------------------------------------------- the stages
def test_two_iterations_of_each_stage_lower_its_loss(trained, tmp_path):
    union, head, run, rigid = trained
    out = tmp_path / "run"
    metrics = train_hair(union, run / "face.pt", rigid, out, head, TINY_HAIR, progress=False)
    log = pd.read_csv(out / "hair" / "loss.csv")
    assert list(log["step"]) == [1, 2] and log["total"][1] < log["total"][0]
    assert metrics["n_gaussians"] == 450 and 0 <= metrics["training_views"]["hair_iou"] <= 1
    assert (out / "hair.pt").is_file() and (out / "hair" / "views.png").is_file()
    assert metrics["hair_share"] > 0.1 and "hairless" not in metrics  # hair on its head: trained

    metrics = train_joint(union, run / "face.pt", out / "hair.pt", rigid, out, head, TINY_HAIR, progress=False)
    log = pd.read_csv(out / "joint" / "loss.csv")
    assert list(log["step"]) == [1, 2] and log["total"][1] < log["total"][0]
    for split in ("val", "test"):
        assert metrics[split]["psnr_head_paper"] > 5
    assert (out / "joint.pt").is_file() and (out / "joint" / "val.png").is_file()
    # The canonical hair and the face's geometry stayed as they were.
    hair_before = torch.load(out / "hair.pt", weights_only=False)["hair"]
    avatar, _, _ = load_avatar(out, head)
    for name, value in avatar.hair.state_dict().items():
        assert torch.equal(value, hair_before[name]), name
    face_before = torch.load(run / "face.pt", weights_only=False)["model"]
    after = avatar.face.state_dict()
    assert all(torch.equal(after[k], v) for k, v in face_before.items() if k.startswith("displacement_decoder"))
    assert not torch.equal(after["diffuse_texture"], face_before["diffuse_texture"])


def test_a_bald_subject_trains_no_hair_and_its_avatar_is_its_face(tmp_path):
    """A subject whose parsing shows no hair (a bald head; the authors' subject 218 has no hair
    stage) keeps no Gaussian and takes no hair step; the joint stage trains the face alone (with
    the canonical hair's rates on, which have nothing to train), the avatar renders as its face,
    and the export and its viewer take the empty hair."""
    from browser import free_port
    from mega.hair.ply import read_gaussian_ply
    from mega.view.exports import ExportViewer

    union, head = tiny_subject(tmp_path, "--hair", "none")
    run, rigid = tmp_path / "run", tmp_path / "hair_rigid.npz"
    train_face(union, head, run, TINY_FACE, progress=False)
    assert main(["hair-rigid", str(union), "--head-model", str(tmp_path / "head_model"), "--out", str(rigid)]) == 0
    config = TINY_HAIR.replace(joint_hair_appearance_lr_ratio=0.5, joint_hair_geometry_lr_ratio=0.5)
    # Trained first as if it had hair (threshold 0): the stage fits its scalp Gaussians to nothing.
    assert train_hair(union, run / "face.pt", rigid, run, head, config.replace(hairless_below=0),
                      progress=False)["n_gaussians"] == 450
    metrics = train_hair(union, run / "face.pt", rigid, run, head, config, progress=False)
    assert metrics["hairless"] and metrics["hair_share"] == 0 and metrics["n_gaussians"] == 0
    # Nothing of the earlier training is left to contradict it.
    assert metrics["iterations"] == 0 and not any((run / "hair" / name).exists()
                                                  for name in ("loss.csv", "checkpoint.pt", "views.png"))
    assert (run / "hair" / "loss.png").is_file()  # the workflow's output: a figure that says why
    assert json.loads((run / "hair" / "metrics.json").read_text())["hairless"] is True
    assert torch.load(run / "hair.pt", weights_only=False)["hair"]["params.means"].shape == (0, 3)
    with pytest.raises(ConfigError, match="'hairless_below' must be a share in \\[0, 1\\], got 5"):
        HairConfig.from_dict({"hairless_below": 5}, where="config.yaml hair")

    metrics = train_joint(union, run / "face.pt", run / "hair.pt", rigid, run, head, config, progress=False)
    log = pd.read_csv(run / "joint" / "loss.csv")
    assert list(log["step"]) == [1, 2] and log["total"].notna().all() and log["total"][1] < log["total"][0]
    assert (log[["offset_quats", "aiap_xyz", "aiap_cov", "solid"]] == 0).all().all()
    for split in ("val", "test"):
        assert metrics[split]["hair_iou"] == 0
        assert metrics[split]["psnr_head_paper"] == metrics[split]["face_only_psnr_head_paper"] > 5

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads((run / "joint" / "metrics.json").read_text(), parse_constant=strict)
    assert math.isnan(metrics["val"]["psnr_hair"]) and written["val"]["psnr_hair"] is None  # no hair pixel
    assert main(["figure", "curves", "--run-dir", str(run), "--out", str(tmp_path / "training.png")]) == 0

    avatar, frames, _ = load_avatar(run, head)
    camera = Camera(a_camera(28, 40).intrinsics[None], torch.eye(4)[None], 28, 40)
    camera.world_to_camera[0, 2, 3] = 0.6  # the head half a metre and more in front
    with torch.no_grad():
        flame = frames(torch.tensor([0]))
        out = avatar(flame, camera, torch.eye(3)[None], torch.zeros(1, 3), evaluation=True)
    assert out["face"]["mask"].any() and float(out["hair"]["alpha"].abs().max()) == 0
    assert torch.equal(out["rgb"], out["face"]["rgb"])

    assert main(["export", str(run), "--head-model", str(tmp_path / "head_model"), "--out",
                 str(tmp_path / "export")]) == 0
    ply = read_gaussian_ply(tmp_path / "export" / "hair_canonical.ply")
    assert ply["means"].shape == (0, 3) and ply["sh"].shape == (0, 16, 3)
    viewer = ExportViewer(tmp_path / "export", "127.0.0.1", free_port())
    try:
        assert list(viewer.nodes) == ["face.obj"]  # the empty hair is left out, the face shown
    finally:
        viewer.stop()


def test_the_hair_share_counts_hair_against_the_object_and_refuses_an_empty_parsing(tmp_path):
    from mega.data.parsing import LABEL
    from mega.train.hair import hair_share

    class Parsed:
        """Two images of labels, as SubjectDataset gives them."""

        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def parsing_labels(self, i):
            return self.images[i]

        def parsing_path(self, i):
            return tmp_path / "parsing" / f"{i}_labels.png"

    head = torch.zeros(4, 5, dtype=torch.long)
    head[1:, :] = LABEL["skin"]
    with_hair = head.clone()
    with_hair[1, :] = LABEL["hair"]
    with_hair[0, 0] = LABEL["cloth"]  # neither head nor hair
    assert hair_share(Parsed([head, with_hair])) == pytest.approx(5 / 30)
    with pytest.raises(DataError, match=r"parsing: the parsing of the one-frame split labels no pixel as head or hair"):
        hair_share(Parsed([torch.zeros(4, 5, dtype=torch.long)]))


def test_the_canonical_hair_trains_supersampled_and_densifies(trained, tmp_path):
    union, head, run, rigid = trained
    # Densification at step 2 (a batch of 15 images: every 30 images, from the 15th).
    config = TINY_HAIR.replace(hair_supersample=2, densify_from_images=15, densify_every_images=30)
    metrics = train_hair(union, run / "face.pt", rigid, tmp_path, head, config, progress=False)
    log = pd.read_csv(tmp_path / "hair" / "loss.csv")
    assert log["total"][1] < log["total"][0]
    assert metrics["n_gaussians"] > 450  # densified from the drawn image's gradients
    # Its evaluation on the training views drew the hair the same way, and hair.pt records it.
    assert 0 < metrics["training_views"]["hair_iou"] <= 1
    assert torch.load(tmp_path / "hair.pt", weights_only=False)["hair_config"]["hair_supersample"] == 2
    with pytest.raises(ConfigError, match="hair_supersample"):
        HairConfig.from_dict({"hair_supersample": 0}, where="config.yaml hair")


def test_the_avatar_trains_and_draws_its_hair_antialiased(trained, tmp_path):
    from mega.avatar import Avatar, RigidTable
    from mega.data.gaussian_avatars import collate_samples
    from mega.train.face import load_face
    from mega.train.hair import open_hair_split
    union, head, run, rigid = trained
    config = TINY_HAIR.replace(hair_rasterize_mode="antialiased")
    metrics = train_hair(union, run / "face.pt", rigid, tmp_path, head, config, progress=False)
    assert pd.read_csv(tmp_path / "hair" / "loss.csv")["total"].notna().all()
    assert 0 < metrics["training_views"]["hair_iou"] <= 1
    checkpoint = torch.load(tmp_path / "hair.pt", weights_only=False)
    assert checkpoint["hair_config"]["hair_rasterize_mode"] == "antialiased"
    # The avatar (every stage's and the evaluation's render) draws its hair in its config's mode.
    face, frames = load_face(run / "face.pt", head)
    hair = GaussianHair(0, 3)
    hair.load_state_dict(checkpoint["hair"])
    batch = collate_samples([open_hair_split(union, "train")[i] for i in (0, 5)])
    index = batch["timestep_index"]
    flame, (rotation, translation) = frames(index), RigidTable.from_file(rigid)(index)
    alpha = {}
    with torch.no_grad():
        for mode in ("classic", "antialiased"):
            out = Avatar(face, hair, None, config.replace(hair_rasterize_mode=mode))(
                flame, batch["camera"], rotation, translation)
            direct = render_hair(out["gaussians"], batch["camera"], 0, rasterize_mode=mode)
            assert torch.allclose(out["hair"]["alpha"], direct["alpha"])
            alpha[mode] = out["hair"]["alpha"]
    assert alpha["antialiased"].sum() < alpha["classic"].sum()


def test_the_canonical_hair_trains_on_every_frame_when_asked(trained, tmp_path, monkeypatch, one_thread):
    from mega.train import hair as hair_stage

    union, head, run, rigid = trained
    # A training split of two timesteps: the tiny subject's (the canonical one) and its test frames'.
    union = shutil.copytree(union.parent, tmp_path / "subject") / union.name
    train_split = json.loads((union / "transforms_train.json").read_text())
    test_frames = json.loads((union / "transforms_test.json").read_text())["frames"]
    train_split["frames"] += test_frames
    (union / "transforms_train.json").write_text(json.dumps(train_split))
    seen: dict[str, set[int]] = {}
    step = hair_stage.HairStage.step

    def recording_step(self, batch):
        seen.setdefault(self.config.hair_frames + str(self.config.cache_mb), set()).update(
            batch["timestep_index"].tolist())
        return step(self, batch)

    monkeypatch.setattr(hair_stage.HairStage, "step", recording_step)
    states = {}
    for frames, cache_mb in (("canonical", 2048), ("all", 2048), ("all", 0)):
        out = tmp_path / f"{frames}{cache_mb}"
        config = TINY_HAIR.replace(hair_frames=frames, cache_mb=cache_mb)
        metrics = train_hair(union, run / "face.pt", rigid, out, head, config, progress=False)
        # The same number of steps either way, and the figure of the canonical frame's views.
        assert metrics["iterations"] == 2 and metrics["training_views"]["n_images"] == 15
        states[frames, cache_mb] = torch.load(out / "hair.pt", weights_only=False)["hair"]
    # The images of both timesteps trained the hair with "all"; the canonical frame's alone otherwise.
    assert len(seen["canonical2048"]) == 1 and len(seen["all2048"]) == 2
    assert any(not torch.equal(v, states["canonical", 2048][k]) for k, v in states["all", 2048].items())
    # Made again for each batch (no room to keep the face's renders) or kept: the same training.
    for name, value in states["all", 2048].items():
        assert torch.equal(value, states["all", 0][name]), name
    with pytest.raises(ConfigError, match="hair_frames"):
        HairConfig.from_dict({"hair_frames": "every"}, where="config.yaml hair")


def test_the_joint_stage_makes_the_faces_frozen_geometry_once_per_image(trained, canonical_hair, tmp_path,
                                                                         monkeypatch, one_thread):
    """The joint stage trains the face's appearance alone, so each image's G-buffer and each
    timestep's vertices are made once and kept where the whole split's fit in cache_mb. Kept, the
    geometry is the face's own to float rounding (the vertices of a timestep made in a batch of
    another size round differently, as they did between batches before) and the training the
    same; made again for each batch (no room: cache 0), the same bits as inside the face's forward."""
    from mega.avatar import Avatar, RigidTable
    from mega.data.gaussian_avatars import SubjectDataset, collate_samples
    from mega.face.model import GEOMETRY_OUTPUTS, NeuralFace
    from mega.train.face import load_face
    from mega.train.joint import JointStage, deformation_field_of

    union, head, run, rigid = trained
    made: list[int] = []
    in_step: list[bool] = []
    rasterize, step = NeuralFace.rasterize, JointStage.step

    def counting_rasterize(self, vertices, cameras):
        if in_step:
            made.append(int(cameras.intrinsics.shape[0]))
        return rasterize(self, vertices, cameras)

    def marked_step(self, batch):
        in_step.append(True)
        try:
            return step(self, batch)
        finally:
            in_step.pop()

    monkeypatch.setattr(NeuralFace, "rasterize", counting_rasterize)
    monkeypatch.setattr(JointStage, "step", marked_step)
    config = TINY_HAIR.replace(joint_iterations=4, joint_batch_size=5)  # 20 draws of the 15 training images
    images, states, losses_by_step = {}, {}, {}
    for label, cache_mb in (("kept", 2048), ("made again", 0), ("in the forward", 2048)):
        if label == "in the forward":
            monkeypatch.setattr(JointStage, "face_geometry", lambda self, flame, batch: None)
        made.clear()
        out = tmp_path / label.replace(" ", "_")
        train_joint(union, run / "face.pt", canonical_hair, rigid, out, head, config.replace(cache_mb=cache_mb),
                    progress=False)
        images[label] = sum(made)
        states[label] = torch.load(out / "joint.pt", weights_only=False)
        losses_by_step[label] = pd.read_csv(out / "joint" / "loss.csv")["total"].tolist()
    assert images == {"kept": 15, "made again": 20, "in the forward": 20}
    reference = states["in the forward"]
    parts = [k for k, v in reference.items() if isinstance(v, dict) and v and all(
        isinstance(t, torch.Tensor) for t in v.values())]
    assert "deformation" in parts and "model" in parts  # the field and the face
    for part in parts:
        for name, value in reference[part].items():
            assert torch.equal(states["made again"][part][name], value), (part, name)
    assert losses_by_step["kept"] == pytest.approx(losses_by_step["in the forward"], rel=1e-5)

    # What the stage hands the face, from its store, against the face's own of the same batch.
    monkeypatch.undo()
    face, frames = load_face(run / "face.pt", head, "cpu")
    for p in frames.parameters():
        p.requires_grad_(False)
    for p in face.displacement_decoder.parameters():
        p.requires_grad_(False)
    hair = GaussianHair(0, TINY_HAIR.sh_degree)
    hair.load_state_dict(torch.load(canonical_hair, weights_only=False)["hair"])
    dataset = SubjectDataset(union, "train", parsing="require")
    stage = JointStage(Avatar(face, hair, deformation_field_of(TINY_HAIR), TINY_HAIR), frames,
                       RigidTable.from_file(rigid), TINY_HAIR, n_images=len(dataset))
    stage.begin_step(0)
    for indices in ([0, 3, 7], [7, 1, 3, 9]):  # the second batch partly from the store
        batch = collate_samples([dataset[i] for i in indices])
        flame = stage.frames(batch["timestep_index"])
        kept = stage.face_geometry(flame, batch)
        with torch.no_grad():
            own = face.render_geometry(flame, batch["camera"])
        assert torch.equal(kept["rast"][..., 3], own["rast"][..., 3])  # the same triangle at every pixel
        for key in GEOMETRY_OUTPUTS:
            # The G-buffer's barycentrics move most (up to 3e-5) when a small triangle's corners move by 1 ulp.
            atol = 1e-4 if key == "rast" else 1e-6
            assert torch.allclose(kept[key].float(), own[key].float(), rtol=0, atol=atol), key
    assert len(stage._rast) == 5 and len(stage._vertices) == 1
    # No room for the whole split: nothing kept.
    small = JointStage(stage.avatar, frames, stage.rigid, TINY_HAIR.replace(cache_mb=1), n_images=len(dataset))
    small.face_geometry(flame, batch)
    assert not small._rast and not small._vertices


def test_the_joint_stage_decays_the_faces_rates_alone_when_asked(trained, canonical_hair, tmp_path):
    from mega.train.checkpoint import load_checkpoint
    union, head, run, rigid = trained
    config = TINY_HAIR.replace(joint_face_lr_final_ratio=0.1)
    train_joint(union, run / "face.pt", canonical_hair, rigid, tmp_path, head, config, progress=False)
    groups = {g["name"]: g["lr"] for g in load_checkpoint(tmp_path / "joint" / "checkpoint.pt")["optimizer"]["param_groups"]}
    # At the last step: the face's rates at a tenth of stage 1's, the field's as it started.
    assert groups["textures"] == pytest.approx(0.1 * TINY_FACE.learning_rate)
    assert groups["pixel_decoder"] == pytest.approx(0.1 * TINY_FACE.lr_pixel_decoder)
    assert groups["deformation"] == pytest.approx(config.lr_deform)
    for bad in (0.0, 1.5):
        with pytest.raises(Exception, match="joint_face_lr_final_ratio"):
            HairConfig.from_dict({"joint_face_lr_final_ratio": bad}, where="config.yaml hair")


def test_the_joint_stage_trains_the_canonical_hair_when_asked_and_the_avatar_keeps_it(trained, canonical_hair,
                                                                                      tmp_path):
    union, head, run, rigid = trained
    # The colours alone (the synthetic settings').
    config = TINY_HAIR.replace(joint_hair_appearance_lr_ratio=1.0)
    shutil.copy(canonical_hair, tmp_path / "hair.pt")  # a run folder as the workflow leaves it
    train_joint(union, run / "face.pt", tmp_path / "hair.pt", rigid, tmp_path, head, config, progress=False)
    before = torch.load(canonical_hair, weights_only=False)["hair"]
    avatar, _, _ = load_avatar(tmp_path, head)
    after = avatar.hair.state_dict()
    # Colour and opacity moved; positions, orientations and sizes stayed; hair.pt is untouched.
    for name in ("params.sh0", "params.opacities"):
        assert not torch.equal(after[name], before[name]), name
    for name in ("params.means", "params.quats", "params.scales", "params.shN"):
        assert torch.equal(after[name], before[name]), name
    assert torch.equal(torch.load(tmp_path / "hair.pt", weights_only=False)["hair"]["params.sh0"], before["params.sh0"])

    # The geometry alone: positions, orientations and sizes move, colours and opacities stay.
    config = TINY_HAIR.replace(joint_hair_geometry_lr_ratio=1.0)
    train_joint(union, run / "face.pt", tmp_path / "hair.pt", rigid, tmp_path, head, config, progress=False,
                restart=True)
    after = load_avatar(tmp_path, head)[0].hair.state_dict()
    for name in ("params.means", "params.quats", "params.scales"):
        assert not torch.equal(after[name], before[name]), name
    for name in ("params.sh0", "params.shN", "params.opacities"):
        assert torch.equal(after[name], before[name]), name
    for name in ("joint_hair_appearance_lr_ratio", "joint_hair_geometry_lr_ratio"):
        for bad in (-0.1, 11.0):
            with pytest.raises(Exception, match=name):
                HairConfig.from_dict({name: bad}, where="config.yaml hair")


def test_the_joint_stage_keeps_the_face_stages_target_under_the_hair(trained, canonical_hair):
    """The joint stage's diffuse term follows the face's ``hair_target``: the authors' rule teaches
    white every triangle under the hair; ``white_on_scalp`` puts no gradient where the hair hides
    triangles off the scalp, so the joint stage does not undo what the face stage left untaught."""
    from mega.avatar import Avatar, RigidTable
    from mega.data.gaussian_avatars import SubjectDataset, collate_samples
    from mega.data.parsing import LABEL
    from mega.train.face import load_face
    from mega.train.joint import JointStage, deformation_field_of, joint_losses

    union, head, run, rigid = trained
    face, frames = load_face(run / "face.pt", head, "cpu")
    hair = GaussianHair(0, TINY_HAIR.sh_degree)
    hair.load_state_dict(torch.load(canonical_hair, weights_only=False)["hair"])
    stage = JointStage(Avatar(face, hair, deformation_field_of(TINY_HAIR), TINY_HAIR), frames,
                       RigidTable.from_file(rigid), TINY_HAIR)
    batch = collate_samples([SubjectDataset(union, "train", parsing="require")[i] for i in range(3)])
    rotation, translation = stage.rigid(batch["timestep_index"])
    out = stage.avatar(stage.frames(batch["timestep_index"]), batch["camera"], rotation, translation)
    triangle_id = out["face"]["rast"][..., 3].long()
    on_scalp = torch.cat([torch.ones(1, dtype=torch.bool), face.mesh.scalp_faces])[triangle_id][:, None]
    on_other = (triangle_id > 0)[:, None] & ~on_scalp
    over_scalp = (triangle_id > 0)[:, None] & on_scalp
    assert on_other.any() and over_scalp.any()
    batch["parsing"] = torch.full_like(batch["parsing"], LABEL["hair"])  # every pixel hair
    grads = {}
    for rule in ("white", "white_on_scalp"):
        face.config = face.config.replace(hair_target=rule)
        diffuse = out["face"]["rgb_diffuse"].detach().requires_grad_()
        terms = joint_losses({**out, "face": {**out["face"], "rgb_diffuse": diffuse}}, batch, TINY_HAIR,
                             stage.neighbours, stage.canonical, rotation, face)
        (grad,) = torch.autograd.grad(terms["diffuse_rgb"], diffuse)
        grads[rule] = grad.abs().sum(1, keepdim=True)
    assert bool((grads["white"][on_other] > 0).any())
    assert bool((grads["white_on_scalp"][on_other] == 0).all())
    assert torch.equal(grads["white_on_scalp"][over_scalp], grads["white"][over_scalp])


def test_the_joint_stage_keeps_the_canonical_hair_stages_terms_it_is_given(trained, canonical_hair, tmp_path):
    """``joint_hair_terms`` adds the canonical-hair stage's hair L2, SSIM and silhouette terms (any
    of them; the authors' joint stage keeps all three) to eq. 15: the posed hair's spill outside
    the hair mask then moves the deformation field; without them (eq. 15) nothing pulls it back."""
    from mega.avatar import Avatar, RigidTable
    from mega.data.gaussian_avatars import SubjectDataset, collate_samples
    from mega.data.parsing import LABEL
    from mega.train.face import load_face
    from mega.train.hair import hair_losses
    from mega.train.joint import LOSS_TERMS, JointStage, deformation_field_of, joint_loss_weights, joint_losses

    union, head, run, rigid = trained
    face, frames = load_face(run / "face.pt", head, "cpu")
    hair = GaussianHair(0, TINY_HAIR.sh_degree)
    hair.load_state_dict(torch.load(canonical_hair, weights_only=False)["hair"])
    batch = collate_samples([SubjectDataset(union, "train", parsing="require")[i] for i in range(3)])
    # The hair's pixels: the top rows alone, so that the rendered hair spills below them.
    parsing = torch.zeros_like(batch["parsing"])
    parsing[..., :4, :] = LABEL["hair"]
    batch["parsing"] = parsing
    authors = ("hair_rgb", "hair_ssim", "silhouette")
    for names in ((), ("silhouette",), authors):
        config = TINY_HAIR.replace(joint_hair_terms=names)
        stage = JointStage(Avatar(face, hair, deformation_field_of(config), config), frames,
                           RigidTable.from_file(rigid), config)
        assert stage.loss_terms == LOSS_TERMS + names
        assert set(joint_loss_weights(config)) == set(stage.loss_terms)
        rotation, translation = stage.rigid(batch["timestep_index"])
        out = stage.avatar(stage.frames(batch["timestep_index"]), batch["camera"], rotation, translation)
        terms = joint_losses(out, batch, config, stage.neighbours, stage.canonical, rotation, face)
        assert tuple(terms) == stage.loss_terms
        expected = hair_losses(out, batch, config)
        for name in names:
            assert float(terms[name].detach()) == pytest.approx(float(expected[name].detach()), rel=1e-6), name
        if "silhouette" in names:
            assert float(terms["silhouette"].detach()) > 0
            grads = torch.autograd.grad(terms["silhouette"], list(stage.avatar.deformation.parameters()),
                                        allow_unused=True)
            assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    for bad in (["silhouette", "silhouette"], ["solid"], "silhouette"):
        with pytest.raises(Exception, match="joint_hair_terms"):
            HairConfig.from_dict({"joint_hair_terms": bad}, where="config.yaml hair")

    # Trained: loss.csv carries the terms.
    config = TINY_HAIR.replace(joint_hair_terms=authors)
    shutil.copy(canonical_hair, tmp_path / "hair.pt")
    train_joint(union, run / "face.pt", tmp_path / "hair.pt", rigid, tmp_path, head, config, progress=False)
    log = pd.read_csv(tmp_path / "joint" / "loss.csv")
    assert list(log["step"]) == [1, 2]
    for name in authors:
        assert log[name].notna().all() and (log[name] > 0).all(), name


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stage", ["hair", "joint", "joint_with_hair_colours"])
def test_resume_of_each_stage_equals_the_uninterrupted_run(trained, canonical_hair, tmp_path, stage):
    union, head, run, rigid = trained
    # Densification at steps 2 and 4 (a batch of 5 images: every 10 images), on both sides of the interruption.
    config = TINY_HAIR.replace(hair_iterations=4, joint_iterations=4, hair_batch_size=5, joint_batch_size=5,
                               densify_from_images=5, densify_every_images=10, checkpoint_every=2,
                               joint_hair_appearance_lr_ratio=1.0 if stage == "joint_with_hair_colours" else 0.0)
    hair_pt = canonical_hair
    parts = {"hair": ["hair"], "joint": ["deformation"], "joint_with_hair_colours": ["deformation", "hair"]}[stage]
    stage = "hair" if stage == "hair" else "joint"

    def run_stage(folder, stop_after=None):
        if stage == "hair":
            return train_hair(union, run / "face.pt", rigid, folder, head, config, progress=False,
                              stop_after=stop_after)
        return train_joint(union, run / "face.pt", hair_pt, rigid, folder, head, config, progress=False,
                           stop_after=stop_after)

    run_stage(tmp_path / "straight")
    assert run_stage(tmp_path / "resumed", stop_after=3) == {"stopped_at": 3}
    run_stage(tmp_path / "resumed")
    log_a = pd.read_csv(tmp_path / "straight" / stage / "loss.csv")
    log_b = pd.read_csv(tmp_path / "resumed" / stage / "loss.csv")
    assert list(log_b["step"]) == [1, 2, 3, 4]
    assert log_a["total"].tolist() == pytest.approx(log_b["total"].tolist(), rel=1e-5)
    a = torch.load(tmp_path / "straight" / f"{stage}.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / f"{stage}.pt", weights_only=False)
    for part in parts:
        for name, value in a[part].items():
            assert torch.allclose(value.float(), b[part][name].float(), atol=1e-6), name
    if stage == "hair":
        assert log_a["n_gaussians"].iloc[-1] > log_a["n_gaussians"].iloc[0]  # densification happened


def test_a_stage_whose_input_was_trained_again_starts_over_instead_of_resuming(trained, canonical_hair, tmp_path):
    """The workflow reruns the joint stage when hair.pt is newer; its checkpoint of the old hair
    (same path) must not be resumed, or the avatar keeps the old hair's training."""
    union, head, run, rigid = trained
    config = TINY_HAIR.replace(joint_iterations=4, checkpoint_every=1)
    hair_pt = tmp_path / "hair.pt"
    shutil.copy(canonical_hair, hair_pt)
    out = tmp_path / "run"
    assert train_joint(union, run / "face.pt", hair_pt, rigid, out, head, config, progress=False,
                       stop_after=2) == {"stopped_at": 2}
    state = torch.load(hair_pt, weights_only=False)
    # Written again with the same Gaussians (the hair stage rerun at its end, or with a setting it
    # may resume under): other bytes (torch.save names its entries after the temporary file), the
    # same hair, so the joint stage still resumes.
    state["hair_config"]["cache_mb"] = 1024
    save_checkpoint(hair_pt, state)
    assert train_joint(union, run / "face.pt", hair_pt, rigid, out, head, config, progress=False,
                       stop_after=3) == {"stopped_at": 3}
    assert list(pd.read_csv(out / "joint" / "loss.csv")["step"]) == [1, 2, 3]
    state["hair"]["params.opacities"] += 1.0  # the canonical hair trained again, to the same path
    save_checkpoint(hair_pt, state)
    with pytest.raises(TrainingError, match=r"other settings or inputs \(hair: .*hair.pt sha256:\w+' → '.*hair.pt sha256:"):
        train_joint(union, run / "face.pt", hair_pt, rigid, out, head, config, progress=False)
    train_joint(union, run / "face.pt", hair_pt, rigid, out, head, config, progress=False,
                on_settings_change="restart")
    log = pd.read_csv(out / "joint" / "loss.csv")
    assert list(log["step"]) == [1, 2, 3, 4] and (out / "joint.pt").is_file()  # from step 1, not resumed


@pytest.mark.parametrize("stage", ["hair", "joint"])
def test_a_non_finite_loss_stops_each_stage_cleanly(trained, canonical_hair, tmp_path, monkeypatch, stage):
    union, head, run, rigid = trained
    config = TINY_HAIR.replace(hair_iterations=3, joint_iterations=3)
    hair_pt = canonical_hair
    calls = []
    original = losses.solid_hair_loss

    def nan_at_step_2(*args, **kwargs):
        calls.append(1)
        value = original(*args, **kwargs)
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(losses, "solid_hair_loss", nan_at_step_2)
    with pytest.raises(TrainingError, match="step 2: loss 'solid' is nan.*\\(step 1\\)"):
        if stage == "hair":
            train_hair(union, run / "face.pt", rigid, tmp_path / "run", head, config, progress=False)
        else:
            train_joint(union, run / "face.pt", hair_pt, rigid, tmp_path / "run", head, config, progress=False)
    assert not (tmp_path / "run" / f"{stage}.pt").exists()
    assert torch.load(tmp_path / "run" / stage / "checkpoint.pt", weights_only=False)["step"] == 1


def test_cli_trains_both_stages(trained, tmp_path):
    union, head, run, rigid = trained
    settings = json.dumps({"init_on_scalp": 100, "init_off_scalp": 100, "hair_batch_size": 15,
                           "joint_batch_size": 15, "deform_layers": [8, 8], "data_workers": 0, "val_views": 1})
    common = [str(union), "--out", str(tmp_path), "--head-model", str(run.parent / "head_model"), "--face",
              str(run / "face.pt"), "--rigid", str(rigid), "--settings", settings, "--iterations", "1", "--quiet"]
    assert main(["train-hair", *common]) == 0
    assert main(["train-joint", *common, "--hair", str(tmp_path / "hair.pt"), "--variant", "allgs",
                 "--ablations", str(Path(__file__).resolve().parents[1] / "config" / "ablations.yaml")]) == 0
    joint = torch.load(tmp_path / "joint.pt", weights_only=False)
    assert joint["variant"] == "allgs" and math.isinf(joint["hair_config"]["early_stop_gap_mm"])
    assert main(["render", str(tmp_path), str(union), "--head-model", str(run.parent / "head_model"),
                 "--rigid", str(rigid), "--split", "test", "--out", str(tmp_path / "renders"), "--limit", "2",
                 "--device", "cpu"]) == 0
    assert len(list((tmp_path / "renders").glob("*.blend.png"))) == 2
    assert main(["export", str(tmp_path), "--head-model", str(run.parent / "head_model"), "--out",
                 str(tmp_path / "export"), "--timestep-index", "0", "--rigid", str(rigid)]) == 0
    from mega.hair.ply import read_gaussian_ply
    canonical = read_gaussian_ply(tmp_path / "export" / "hair_canonical.ply")
    framed = read_gaussian_ply(tmp_path / "export" / "hair_t00000.ply")
    n = torch.load(tmp_path / "hair.pt", weights_only=False)["hair"]["params.means"].shape[0]
    assert canonical["means"].shape == (n, 3) and framed["sh"].shape == canonical["sh"].shape
    assert (tmp_path / "export" / "face.obj").is_file() and (tmp_path / "export" / "face_diffuse.png").is_file()
    assert main(["train-hair", *common[:-3], "--settings", '{"hair_epochs": 0}']) == 2  # a clear error
