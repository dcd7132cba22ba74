"""The hair's per-frame rigid alignment (paper eq. 5): ICP, moving Gaussians, the table on disk."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mega.cli import main
from mega.data.flame_params import read_flame_params
from mega.data.rig import NERSEMBLE_SERIALS, nersemble_like_rig
from mega.data.synth import SynthOptions, canonical_parameters, sequence_parameters
from mega.data.union_writer import UnionWriter
from mega.errors import DataError
from mega.flame import write_head_model
from mega.flame.model import FlameModel
from mega.hair.rigid import (apply_rigid_to_gaussians, matrix_to_quaternion, read_hair_rigid, rigid_icp,
                             scalp_vertices, tracked_parameter_files)
from mega.render.gaussians import quaternion_to_matrix


def random_motion(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A rotation of 10–20° about a random axis and a translation of 1–4 cm."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(10, 20))
    direction = rng.normal(size=3)
    t = direction / np.linalg.norm(direction) * rng.uniform(0.01, 0.04)
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix(), t


def rotation_error_rad(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(A @ B.T).as_rotvec()))


@pytest.fixture(scope="module")
def subject(tmp_path_factory, toy_head) -> tuple[Path, Path]:
    """(UNION folder, head-model folder): the synthetic subject's motion (head turns, jaw,
    expressions) on 3 sequences × 2 frames, 9 cameras of 4 × 4 blank images (only the FLAME
    parameters and the split files matter here)."""
    root = tmp_path_factory.mktemp("hair_rigid")
    write_head_model(root / "head_model", toy_head)
    options = SynthOptions(n_sequences=3, frames_per_sequence=2, n_cameras=9)
    motion = sequence_parameters(options, toy_head)
    writer = UnionWriter(root / "data", "rigid", nersemble_like_rig(4, 4, 9), list(NERSEMBLE_SERIALS[:9]))
    blank, mask = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    for sequence, frames in motion.items():
        for t, params in enumerate(frames):
            writer.write_flame(sequence, t, params)
            for camera in range(9):
                writer.write_frame(sequence, t, camera, blank, mask)
    sequences = list(motion)
    canonical = canonical_parameters(motion[sequences[0]][0]["shape"])
    union = writer.finish(sequences, sequences[-1:], canonical, onef_timestep=2)
    return union, root / "head_model"


# ----------------------------------------------------------------------------- ICP
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icp_recovers_a_rigid_motion_of_the_scalp(toy_head, seed):
    scalp = toy_head.v_template[toy_head.region_mask("scalp")]
    R_true, t_true = random_motion(seed)
    moved = scalp @ R_true.T + t_true
    R, t, rmse = rigid_icp(scalp, moved)
    assert rotation_error_rad(R, R_true) < 1e-6
    assert np.abs(t - t_true).max() < 1e-7  # metres: far below 0.1 mm
    assert rmse < 1e-7
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)

    noise = np.random.default_rng(seed + 10).normal(size=moved.shape) * 0.0005  # 0.5 mm
    R, t, rmse = rigid_icp(scalp, moved + noise)
    assert rotation_error_rad(R, R_true) < 2e-3
    assert np.abs(t - t_true).max() < 5e-4
    assert rmse == pytest.approx(0.0005 * np.sqrt(3), rel=0.2)  # the noise is what remains


def test_scaled_icp_recovers_the_scale(toy_head):
    scalp = toy_head.v_template[toy_head.region_mask("scalp")]
    R_true, t_true = random_motion(3)
    A, t, rmse = rigid_icp(scalp, 1.08 * scalp @ R_true.T + t_true, with_scaling=True)
    scale = np.cbrt(np.linalg.det(A))
    assert scale == pytest.approx(1.08, abs=1e-9)
    assert rotation_error_rad(A / scale, R_true) < 1e-6
    assert rmse < 1e-7


# ----------------------------------------------------------------------------- Gaussians
def test_matrix_to_quaternion_inverts_quaternion_to_matrix_also_at_half_turns():
    rotations = np.concatenate([Rotation.random(200, random_state=0).as_matrix(),
                                Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix()])
    R = torch.as_tensor(rotations)
    q = matrix_to_quaternion(R)
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-12)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=q.dtype))
    assert (q[:, 0] >= 0).all()


def test_a_rotated_frame_rotates_the_gaussians_covariances():
    torch.manual_seed(0)
    N = 50
    means = torch.randn(N, 3) * 0.1
    quats = torch.randn(N, 4)  # raw, unnormalised parameters
    scales = torch.rand(N, 3) * 0.01 + 0.001
    R_np, t_np = random_motion(4)
    new_means, new_quats = apply_rigid_to_gaussians(means, quats, R_np, t_np)
    assert new_means.dtype == new_quats.dtype == torch.float32  # the inputs', not the float64 arrays'
    R, t = torch.as_tensor(R_np, dtype=torch.float32), torch.as_tensor(t_np, dtype=torch.float32)
    assert torch.allclose(new_means, means @ R.T + t, atol=1e-6)

    def covariance(q):
        M = quaternion_to_matrix(q) * scales[:, None, :]
        return M @ M.transpose(1, 2)

    assert torch.allclose(covariance(new_quats), R @ covariance(quats) @ R.T, atol=1e-9)
    assert torch.allclose(new_quats.norm(dim=-1), quats.norm(dim=-1), atol=1e-5)


def test_moving_gaussians_is_differentiable_in_means_and_quats():
    torch.manual_seed(1)
    means = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    quats = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    R, t = random_motion(5)
    assert torch.autograd.gradcheck(lambda m, q: apply_rigid_to_gaussians(m, q, R, t), (means, quats))


# ----------------------------------------------------------------------------- the subject
def test_base_scalp_is_the_enhanced_meshs_scalp(toy_head, toy_enhanced):
    """Posing the base model gives exactly the enhanced mesh's scalp vertices (same indices)."""
    torch.manual_seed(2)
    params = {"expr": torch.randn(2, 100, dtype=torch.float64) * 0.5, "rotation": torch.randn(2, 3).double() * 0.2,
              "neck_pose": torch.randn(2, 3).double() * 0.1, "jaw_pose": torch.rand(2, 3).double() * 0.2,
              "shape": torch.randn(2, 300, dtype=torch.float64)}
    index = np.flatnonzero(toy_head.region_mask("scalp"))
    base = FlameModel(toy_head).double()(**params)[:, index]
    enhanced = FlameModel(toy_enhanced).double()(**params)[:, index]
    assert torch.allclose(base, enhanced, atol=1e-12)
    assert toy_enhanced.region_mask("scalp")[index].all()


def independent_scalp(union: Path, head, timestep: int, shape: np.ndarray) -> np.ndarray:
    """The scalp of one frame, posed from its own file, one frame at a time."""
    params = read_flame_params(tracked_parameter_files(union)[timestep])
    params["shape"] = shape
    tensors = {k: torch.as_tensor(v, dtype=torch.float64)[None] for k, v in params.items()}
    return FlameModel(head).double()(**tensors)[0, head.region_mask("scalp")].numpy()


def test_cli_writes_transforms_that_map_the_canonical_scalp_onto_each_frame(subject, toy_head, tmp_path):
    union, head_model = subject
    out = tmp_path / "preprocess" / "hair_rigid.npz"
    assert main(["hair-rigid", str(union), "--head-model", str(head_model), "--out", str(out)]) == 0
    rigid = read_hair_rigid(out)
    assert rigid["canonical_timestep"] == 2  # the one-frame split's timestep
    assert rigid["timestep"].tolist() == list(range(6))  # train and val (0-3) and test (4, 5)
    assert not list(out.parent.glob(".*tmp*"))

    shape = read_flame_params(tracked_parameter_files(union)[2])["shape"]
    canonical = independent_scalp(union, toy_head, 2, shape)
    angles = []
    for k, timestep in enumerate(rigid["timestep"]):
        frame = independent_scalp(union, toy_head, int(timestep), shape)
        moved = canonical @ rigid["rotation"][k].T + rigid["translation"][k]
        residual = np.sqrt(np.mean(np.sum((moved - frame) ** 2, axis=1)))
        assert residual == pytest.approx(rigid["rmse_m"][k], abs=1e-9)
        assert residual < 0.001  # the scalp moves almost rigidly: under 1 mm left
        angles.append(np.linalg.norm(Rotation.from_matrix(rigid["rotation"][k]).as_rotvec()))
    assert angles[2] < 1e-9 and np.abs(rigid["translation"][2]).max() < 1e-9  # canonical ↦ itself
    assert max(angles) > 0.05  # the head turns: the transforms are not all near the identity



def test_scalp_vertices_of_chosen_timesteps(subject, toy_head):
    union, _ = subject
    timesteps, canonical, frames = scalp_vertices(union, toy_head, timesteps=[4, 1])
    assert timesteps.tolist() == [1, 4]
    assert frames.shape == (2,) + canonical.shape and canonical.shape[1] == 3
    with pytest.raises(DataError, match=r"timesteps \[7\]"):
        scalp_vertices(union, toy_head, timesteps=[7])


def test_without_the_one_frame_split_the_canonical_frame_must_be_named(subject, tmp_path, capsys):
    union, head_model = subject
    onef = union / "transforms_onef.json"
    saved = onef.read_bytes()
    onef.unlink()
    try:
        out = tmp_path / "hair_rigid.npz"
        assert main(["hair-rigid", str(union), "--head-model", str(head_model), "--out", str(out)]) == 2
        assert "transforms_onef.json: file not found" in capsys.readouterr().err
        assert not out.exists()
        assert main(["hair-rigid", str(union), "--head-model", str(head_model), "--out", str(out),
                     "--canonical-timestep", "1"]) == 0
        assert read_hair_rigid(out)["canonical_timestep"] == 1
    finally:
        onef.write_bytes(saved)


# ----------------------------------------------------------------------------- malformed tables
def valid_table(T: int = 3) -> dict:
    return {"timestep": np.arange(T, dtype=np.int64), "rotation": np.tile(np.eye(3), (T, 1, 1)),
            "translation": np.zeros((T, 3)), "rmse_m": np.zeros(T), "canonical_timestep": np.int64(0)}


@pytest.mark.parametrize("field, change", [
    ("rotation", lambda d: d.pop("rotation")),
    ("translation", lambda d: d.update(translation=np.zeros((3, 2)))),
    ("rmse_m", lambda d: d.update(rmse_m=np.zeros(4))),
    ("rotation", lambda d: d.update(rotation=np.tile(2 * np.eye(3), (3, 1, 1)))),
    ("timestep", lambda d: d.update(timestep=np.array([0.0, 1.0, 2.0]))),
    ("timestep", lambda d: d.update(timestep=np.array([0, 2, 1]))),
    ("canonical_timestep", lambda d: d.update(canonical_timestep=np.int64(7))),
    ("canonical_timestep", lambda d: d.update(canonical_timestep=np.array([0]))),
])
def test_a_malformed_table_names_the_file_and_the_field(tmp_path, field, change):
    table = valid_table()
    change(table)
    path = tmp_path / "hair_rigid.npz"
    np.savez(path, **table)
    with pytest.raises(DataError, match=f"'{field}'") as info:
        read_hair_rigid(path)
    assert str(path) in str(info.value)


def test_a_missing_or_unreadable_table_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_hair_rigid(tmp_path / "absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz: not a NumPy .npz of hair transforms"):
        read_hair_rigid(tmp_path / "broken.npz")


def test_a_table_without_a_frames_transform_names_its_file_and_the_frames(tmp_path):
    import torch

    from mega.avatar import RigidTable

    np.savez(tmp_path / "hair_rigid.npz", **valid_table(3))
    table = RigidTable.from_file(tmp_path / "hair_rigid.npz")
    assert table(torch.tensor([0, 2]))[0].shape == (2, 3, 3)
    with pytest.raises(DataError, match=r"hair_rigid.npz: no rigid hair transform for timesteps \[3, 5\] \(it has 3"):
        table(torch.tensor([1, 3, 5, 3]))
