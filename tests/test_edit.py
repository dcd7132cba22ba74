"""Editing: the hairstyle swap's geometry, and a swap between two tiny trained synthetic subjects
whose hairstyles are made to differ (one on the left of the head, one on the right)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mega.avatar import Avatar, RigidTable
from mega.cli import main
from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.edit.hairswap import Similarity, align_scalps, load_swap, swap_hair
from mega.edit.paint import (lift_mask_to_uv, painted_region, pixel_uvs, read_painting, texel_colours,
                             used_texels)
from mega.errors import DataError
from mega.eval.face import driving_parameters
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.hair.deform import DeformationField
from mega.hair.model import GaussianHair
from mega.hair.rigid import quaternion_multiply, matrix_to_quaternion
from mega.train.checkpoint import load_checkpoint, save_checkpoint
from mega.train.face import train_face
from mega.train.hair import train_hair
from mega.train.joint import load_avatar, train_joint
from test_hair import TINY_FACE, TINY_HAIR, TINY_SUBJECT


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q if torch.det(q) > 0 else -q).float()


def test_swapped_hair_is_posed_by_the_similarity_then_the_rigid_table():
    """x = R_A (s R_s x_B + t_s) + t_A + s·δx_B(x_B, ψ); scales × s; orientations turned by R_A R_s."""
    g = torch.Generator().manual_seed(0)
    hair = GaussianHair(50, sh_degree=1)
    with torch.no_grad():
        hair.params["means"].copy_(torch.randn(50, 3, generator=g) * 0.1)
        hair.params["quats"].copy_(torch.randn(50, 4, generator=g))
        hair.params["scales"].copy_(torch.randn(50, 3, generator=g) * 0.3 - 6)
    field = DeformationField(expression_size=4, layers=(8,), frequencies=2, scale=1e-2)
    torch.nn.init.normal_(field.last.weight, std=0.5, generator=g)  # a field that moves things
    R_s, R_a = random_rotation(g), random_rotation(g)
    similarity = Similarity(1.15, R_s.double().numpy(), np.array([0.01, -0.02, 0.005]), 0.0)
    rigid_a = RigidTable(np.array([0, 1]), np.stack([np.eye(3), R_a.double().numpy()]), np.array([[0, 0, 0],
                                                                                                   [0.03, 0.01, -0.02]]))
    config = HairConfig(sh_degree=1)
    before = {k: v.detach().clone() for k, v in hair.params.items()}
    swapped, rigid = swap_hair(Avatar(None, hair, None, config), Avatar(None, hair, field, config), rigid_a, similarity)
    assert swapped.evaluation_near_z == 0  # the authors' blending of a swap: the 1st near-z

    expression = torch.randn(1, 4, generator=g)
    rotation, translation = rigid(torch.tensor([1]))
    posed, _ = swapped.hair_of({"expr": expression}, rotation, translation)
    offsets = field(hair.params["means"], expression)
    x_b = hair.params["means"].detach()
    expected = (R_a @ (1.15 * x_b @ R_s.T + torch.tensor([0.01, -0.02, 0.005])).T).T + torch.tensor([0.03, 0.01, -0.02])
    torch.testing.assert_close(posed["means"][0], expected + 1.15 * offsets["means"][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(posed["scales"][0], 1.15 * torch.exp(hair.params["scales"] + offsets["scales"][0]),
                               rtol=1e-5, atol=1e-9)
    turned = quaternion_multiply(matrix_to_quaternion((R_a @ R_s)[None])[:, None], hair.params["quats"][None])[0]
    torch.testing.assert_close(posed["quats"][0], torch.nn.functional.normalize(turned + offsets["quats"][0], dim=-1),
                               atol=1e-5, rtol=1e-4)
    for name, value in hair.params.items():  # B's own hair is copied, never changed in place
        assert torch.equal(value, before[name]), name


def test_scalp_alignment_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    scalp_b = rng.normal(size=(300, 3)) * 0.05
    R = random_rotation(torch.Generator().manual_seed(3)).double().numpy()
    scalp_a = 0.9 * scalp_b @ R.T + np.array([0.02, 0.0, -0.01])
    fitted = align_scalps(scalp_b, scalp_a)
    assert fitted.scale == pytest.approx(0.9, abs=1e-6) and fitted.rmse_m < 1e-6
    np.testing.assert_allclose(fitted.rotation, R, atol=1e-6)
    with pytest.raises(DataError, match="different head models"):
        align_scalps(scalp_b[:200], scalp_a)


# ----------------------------------------------------------------------------- two trained subjects
def keep_side(hair_path, sign: float) -> None:
    """Keep only the Gaussians on one side of the head (x above or below the hair's median
    x), so that the two subjects' hairstyles differ unmistakably."""
    state = load_checkpoint(hair_path, "cpu")
    means = state["hair"]["params.means"]
    keep = (means[:, 0] - means[:, 0].median()) * sign > 0.01
    state["hair"] = {k: (v[keep] if k.startswith("params.") else v) for k, v in state["hair"].items()}
    save_checkpoint(hair_path, state)


# Two frames a sequence: the val split then shows the frontal camera at two timesteps.
TWO_FRAMES = [*TINY_SUBJECT[:TINY_SUBJECT.index("--frames") + 1], "2",
              *TINY_SUBJECT[TINY_SUBJECT.index("--frames") + 2:]]


@pytest.fixture(scope="module")
def two_avatars(tmp_path_factory):
    """(head model folder, {name: (UNION, run folder, hair_rigid.npz)}) of two synthetic subjects
    (seeds 0 and 5) trained two steps a stage; A keeps its hair on the left, B on the right."""
    root = tmp_path_factory.mktemp("edit")
    assert main(["head-model", "--out", str(root / "head_model")]) == 0
    head = load_head_model_folder(root / "head_model")
    subjects = {}
    for name, seed, side in (("a", 0, 1.0), ("b", 5, -1.0)):
        assert main(["synth", str(root / name), "--seed", str(seed), *TWO_FRAMES]) == 0
        union = root / name / json.loads((root / name / "summary.json").read_text())["union"]
        run, rigid = root / f"run_{name}", root / f"rigid_{name}.npz"
        train_face(union, head, run, TINY_FACE, progress=False)
        assert main(["hair-rigid", str(union), "--head-model", str(root / "head_model"), "--out", str(rigid)]) == 0
        train_hair(union, run / "face.pt", rigid, run, head, TINY_HAIR, progress=False)
        keep_side(run / "hair.pt", side)
        train_joint(union, run / "face.pt", run / "hair.pt", rigid, run, head, TINY_HAIR, progress=False)
        subjects[name] = (union, run, rigid)
    return root / "head_model", subjects


def hair_masks(avatar: Avatar, rigid, frames, union, device="cpu") -> torch.Tensor:
    """[N, H, W] bool: where the hair's alpha exceeds 0.5 in every val view of the subject."""
    dataset = SubjectDataset(union, "val", parsing="off", depth="off")
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    rotation, translation = rigid(batch["timestep_index"])
    out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation, translation,
                 evaluation=True)
    return out["hair"]["alpha"][:, 0] > 0.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@torch.no_grad()
def test_swapped_hair_lands_where_the_other_hair_aligned_to_the_face_is(two_avatars):
    head_dir, subjects = two_avatars
    head = load_head_model_folder(head_dir)
    (union_a, run_a, rigid_a), (union_b, run_b, _) = subjects["a"], subjects["b"]
    swap = load_swap(run_a, union_a, rigid_a, run_b, union_b, head, torch.device("cpu"))
    # Two identities: their scalps differ by millimetres where no similarity reaches.
    assert swap.similarity.rmse_m < 0.01 and 0.8 < swap.similarity.scale < 1.25

    # B's hair carried onto A independently of the swap's modules: its canonical means through the
    # fitted similarity (numpy), then A's rigid table; rigid only (two joint steps leave the
    # deformation near zero).
    b_hair = load_checkpoint(run_b / "hair.pt", "cpu")["hair"]
    reference = GaussianHair(0, swap.swapped.hair.sh_degree)
    reference.load_state_dict(b_hair)
    with torch.no_grad():
        moved = swap.similarity.apply(reference.params["means"].double().numpy())
        reference.params["means"].copy_(torch.as_tensor(moved, dtype=torch.float32))
        reference.params["scales"].add_(math.log(swap.similarity.scale))
        reference.params["quats"].copy_(quaternion_multiply(
            matrix_to_quaternion(torch.as_tensor(swap.similarity.rotation, dtype=torch.float32)[None]),
            reference.params["quats"]))
    moved_b = Avatar(swap.original.face, reference, None, swap.swapped.config)

    swapped = hair_masks(swap.swapped, swap.rigid, swap.frames, union_a)
    aligned_b = hair_masks(moved_b, swap.rigid_a, swap.frames, union_a)
    own = hair_masks(swap.original, swap.rigid_a, swap.frames, union_a)
    assert swapped.any() and own.any()
    assert iou(swapped, aligned_b) > 0.8, iou(swapped, aligned_b)
    assert iou(swapped, own) < 0.5 * iou(swapped, aligned_b), (iou(swapped, own), iou(swapped, aligned_b))


def test_swap_hair_command_writes_renders_a_comparison_and_a_turntable(two_avatars, tmp_path):
    head_dir, subjects = two_avatars
    (union_a, run_a, rigid_a), (union_b, run_b, _) = subjects["a"], subjects["b"]
    out = tmp_path / "a_with_b"
    assert main(["swap-hair", "--face-run", str(run_a), "--face-union", str(union_a), "--face-rigid", str(rigid_a),
                 "--hair-run", str(run_b), "--hair-union", str(union_b), "--head-model", str(head_dir),
                 "--out", str(out), "--frames", "3", "--fps", "3", "--limit", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {split: min(2, len(SubjectDataset(union_a, split))) for split in ("val", "test")}
    assert summary["n_images"] == expected and expected["test"] == 2
    for split in ("val", "test"):
        assert len(list((out / split).glob("*.blend.png"))) == expected[split]
    assert (out / "turntable.mp4").stat().st_size > 1000 and (out / "comparison.png").stat().st_size > 1000
    assert summary["scalp_alignment"]["scalp_rmse_mm"] < 10.0


def test_swap_refuses_an_avatar_of_another_head_model(two_avatars, tmp_path):
    head_dir, subjects = two_avatars
    (union_a, run_a, rigid_a), (union_b, run_b, _) = subjects["a"], subjects["b"]
    other = tmp_path / "run_b"
    other.mkdir()
    joint = load_checkpoint(run_b / "joint.pt", "cpu")
    joint["head_model"] = "0123456789ab"
    save_checkpoint(other / "joint.pt", joint)
    (other / "hair.pt").write_bytes((run_b / "hair.pt").read_bytes())
    head = load_head_model_folder(head_dir)
    with pytest.raises(DataError, match="trained with head model 0123456789ab"):
        load_swap(run_a, union_a, rigid_a, other, union_b, head, torch.device("cpu"))


# ----------------------------------------------------------------------------- texture painting
def test_a_painted_pixel_lifts_to_the_texels_its_lookup_reads():
    tex = 8
    uv = torch.tensor([[(3 + 0.5) / tex, (5 + 0.5) / tex], [0.52 / tex, 0.49 / tex]])  # a centre; near a corner
    mask = lift_mask_to_uv(uv, tex)
    assert mask[5, 3] == 1 and mask[0, 0] == 1
    assert int(mask.sum()) <= 8 and mask[5, 5] == 0
    covered = torch.tensor([[[True, True, False]]])
    pixel_uv = torch.tensor([[[[3.5 / tex, 5.5 / tex], [6.5 / tex, 1.5 / tex], [0.0, 0.0]]]])
    region = painted_region(mask, pixel_uv, covered)
    assert region[0, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_painted_pixels_give_their_texels_the_mean_of_their_colours():
    tex = 8
    # Two pixels in texel (row 5, column 3), one in texel (0, 0), none elsewhere.
    uv = torch.tensor([[3.2 / tex, 5.9 / tex], [3.8 / tex, 5.1 / tex], [0.4 / tex, 0.3 / tex]])
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    texels, colours = texel_colours(uv, rgb, tex)
    assert texels.tolist() == [0, 5 * tex + 3]
    torch.testing.assert_close(colours, torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]))
    assert bool((lift_mask_to_uv(uv, tex).reshape(-1)[texels] == 1).all())  # inside the painted UV mask


@torch.no_grad()
def test_the_used_texels_hold_every_texel_a_render_reads(two_avatars):
    head_dir, subjects = two_avatars
    union, run, rigid = subjects["a"]
    avatar, frames, _ = load_avatar(run, load_head_model_folder(head_dir))
    face = avatar.face
    used = used_texels(face)
    dataset = SubjectDataset(union, "train", parsing="off", depth="off")
    batch = collate_samples([dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // 6))])
    rast = face(driving_parameters(frames, batch, refined=False), batch["camera"])["rast"]
    covered = rast[..., 3] > 0
    read = lift_mask_to_uv(pixel_uvs(face, rast)[covered], face.diffuse_texture.shape[-1]) > 0
    assert bool(read.any()) and not bool((read & ~used).any())  # every texel read is a used one
    assert 0.2 < float(used.float().mean()) < 0.95  # and the layout leaves texels unused


def test_painting_errors_name_the_file_and_what_is_wrong(tmp_path):
    Image.fromarray(np.zeros((40, 28, 3), np.uint8)).save(tmp_path / "painted.png")
    Image.fromarray(np.zeros((40, 28), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="small.png: the painted mask is 20 x 30 pixels, but camera 8 renders 28 x 40"):
        read_painting(tmp_path / "painted.png", tmp_path / "small.png", 8, 0, (28, 40))
    with pytest.raises(DataError, match="empty.png: the mask marks no painted pixel"):
        read_painting(tmp_path / "painted.png", tmp_path / "empty.png", 8, 0, (28, 40))
    with pytest.raises(DataError, match="missing.png: the painted image was not found"):
        read_painting(tmp_path / "missing.png", tmp_path / "empty.png", 8, 0, (28, 40))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes.txt: the painted mask cannot be decoded \(.*\); expected a PNG of "
                                        "28 x 40 pixels"):
        read_painting(tmp_path / "painted.png", tmp_path / "notes.txt", 8, 0, (28, 40))


# Two decoder steps leave the pixel decoder's output layer near its initialisation, whose colours
# span a narrow band around grey: faster rates than the authors' (0.01 / 1e-4) let this barely
# trained avatar reach the paint's blue in a test's few steps.
TEST_PAINT = {"iterations": 200, "batch_size": 1, "lr_texture": 0.05, "lr_pixel_decoder": 0.005}


@torch.no_grad()
def frame_to_frame_change(avatar, frames, rigid, union) -> float:
    """Mean absolute change (8-bit levels) of the unedited avatar's frontal renders between two
    timesteps: the variation the model shows anyway."""
    dataset = SubjectDataset(union, "val", parsing="off", depth="off")
    assert len(dataset) >= 2, "the val split needs two timesteps"
    batch = collate_samples([dataset[0], dataset[len(dataset) - 1]])
    rotation, translation = rigid(batch["timestep_index"])
    out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation, translation,
                 evaluation=True)
    return float((out["rgb"][0] - out["rgb"][1]).abs().mean() * 255)


def test_painting_moves_the_painted_region_toward_the_paint_and_leaves_the_rest(two_avatars, tmp_path):
    head_dir, subjects = two_avatars
    union, run, rigid = subjects["a"]
    common = [str(run), str(union), "--head-model", str(head_dir), "--rigid", str(rigid), "--quiet"]
    assert main(["paint-example", *common, "--out", str(tmp_path / "painting")]) == 0
    view = json.loads((tmp_path / "painting" / "view.json").read_text())
    out = tmp_path / "painted"
    assert main(["paint", *common, "--image", str(tmp_path / "painting" / "painted.png"),
                 "--mask", str(tmp_path / "painting" / "mask.png"), "--camera", str(view["camera"]),
                 "--timestep", str(view["timestep"]), "--settings", json.dumps(TEST_PAINT),
                 "--out", str(out), "--frames", "3", "--fps", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["painted_texels"] > 0 and (out / "turntable.mp4").is_file() and (out / "comparison.png").is_file()
    loss = pd.read_csv(out / "paint" / "loss.csv")
    assert loss["paint"].iloc[-1] < 0.1 * loss["paint"].iloc[0]  # the painted view takes the paint

    head = load_head_model_folder(head_dir)
    avatar, frames, _ = load_avatar(run, head)
    noise = frame_to_frame_change(avatar, frames, RigidTable.from_file(rigid), union)
    for split in ("val", "test"):
        held_out = summary["held_out"][split]
        if held_out["painted_pixels"] == 0:  # the cheek is out of sight in every view of the split
            continue
        # Toward the paint by more than a just-noticeable difference (ΔE ≈ 2.3). A barely trained
        # avatar's view and expression textures are as large as its diffuse one, so the paint
        # carries over to other views only in part here; the painted view itself takes it fully.
        assert held_out["delta_e_to_paint_after"] < held_out["delta_e_to_paint_before"] - 2.3, held_out
        assert held_out["mean_change_outside_8bit"] < noise, (held_out, noise)
    assert summary["held_out"]["test"]["painted_pixels"] > 0
