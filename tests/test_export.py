"""Exporters: the 3DGS PLY of the hair and the textured OBJ of the face."""

import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from plyfile import PlyData, PlyElement

from mega.cli import main
from mega.data.camera import Camera
from mega.data.rig import nersemble_like_rig
from mega.errors import DataError
from mega.face.config import FaceConfig
from mega.face.export import diffuse_texture_rgb, export_face_mesh, flame_parameters
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.flame import write_head_model
from mega.hair.ply import property_names, read_gaussian_ply, write_gaussian_ply
from mega.render.mesh import interpolate, texture_at
from mega.train.checkpoint import save_checkpoint

# No subdivision keeps the model at ~4k vertices; the exporters do not depend on it.
SMALL_FACE = FaceConfig(tex_size=64, disp_size=16, uv_encoding_size=16, subdivision=False)


# ----------------------------------------------------------------------------- 3DGS PLY
def random_gaussians(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g) * 0.1,
            "quats": torch.randn(n, 4, generator=g) * 3,  # not unit: stored as given
            "log_scales": torch.randn(n, 3, generator=g) - 5,
            "opacity_logits": torch.randn(n, generator=g),
            "sh": torch.randn(n, (degree + 1) ** 2, 3, generator=g)}


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_has_the_3dgs_layout(tmp_path, degree):
    g = random_gaussians(50, degree)
    path = write_gaussian_ply(tmp_path / "hair.ply", **g)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    ply = PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(n_rest)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == property_names((degree + 1) ** 2)
    assert {vertex.data.dtype[name].str for name in names} == {"<f4"}
    assert len(vertex.data) == 50

    def column(name):
        return torch.from_numpy(np.asarray(vertex[name]).copy())

    for i, axis in enumerate("xyz"):
        assert torch.equal(column(axis), g["means"][:, i])
        assert torch.equal(column(f"n{axis}"), torch.zeros(50))
        assert torch.equal(column(f"scale_{i}"), g["log_scales"][:, i])
        assert torch.equal(column(f"f_dc_{i}"), g["sh"][:, 0, i])
    for i in range(4):
        assert torch.equal(column(f"rot_{i}"), g["quats"][:, i])
    assert torch.equal(column("opacity"), g["opacity_logits"])
    # f_rest channel by channel, as graphdeco-inria flattens features_rest.transpose(1, 2).
    rest = g["sh"][:, 1:, :].transpose(1, 2).reshape(50, -1)
    for i in range(n_rest):
        assert torch.equal(column(f"f_rest_{i}"), rest[:, i])
    if degree >= 1:
        # Spelled out: f_rest_0..K-2 are red, then green starts with band-1 coefficient 1.
        k_rest = (degree + 1) ** 2 - 1
        assert torch.equal(column("f_rest_1"), g["sh"][:, 2, 0])
        assert torch.equal(column(f"f_rest_{k_rest}"), g["sh"][:, 1, 1])
        assert torch.equal(column(f"f_rest_{2 * k_rest}"), g["sh"][:, 1, 2])


@pytest.mark.parametrize("degree", [0, 3])
def test_read_inverts_write(tmp_path, degree):
    g = random_gaussians(37, degree, seed=degree)
    # Float64 inputs are written as float32: the read-back equals them to float32 precision.
    write_gaussian_ply(tmp_path / "hair.ply", **{k: v.double() for k, v in g.items()})
    back = read_gaussian_ply(tmp_path / "hair.ply")
    assert set(back) == set(g)
    for key, value in g.items():
        assert back[key].dtype == torch.float32 and back[key].shape == value.shape, key
        torch.testing.assert_close(back[key], value, rtol=0, atol=0, msg=key)


def test_read_finds_properties_by_name(tmp_path):
    """gsplat's exporter leaves out the normals; any order of properties reads the same."""
    g = random_gaussians(20, 1)
    write_gaussian_ply(tmp_path / "a.ply", **g)
    data = PlyData.read(str(tmp_path / "a.ply"))["vertex"].data
    names = [n for n in reversed(data.dtype.names) if not n.startswith("n")]
    shuffled = np.empty(len(data), dtype=[(n, "<f4") for n in names])
    for n in names:
        shuffled[n] = data[n]
    PlyData([PlyElement.describe(shuffled, "vertex")], text=True).write(str(tmp_path / "b.ply"))
    back = read_gaussian_ply(tmp_path / "b.ply")
    for key, value in g.items():
        torch.testing.assert_close(back[key], value, rtol=1e-6, atol=1e-6, msg=key)


def without(path, drop: str, out):
    data = PlyData.read(str(path))["vertex"].data
    kept = [n for n in data.dtype.names if n != drop]
    reduced = np.empty(len(data), dtype=[(n, "<f4") for n in kept])
    for n in kept:
        reduced[n] = data[n]
    PlyData([PlyElement.describe(reduced, "vertex")]).write(str(out))
    return out


@pytest.mark.parametrize("drop", ["opacity", "rot_3", "f_dc_1", "f_rest_5"])
def test_malformed_ply_names_the_file_and_property(tmp_path, drop):
    write_gaussian_ply(tmp_path / "good.ply", **random_gaussians(5, 1))
    bad = without(tmp_path / "good.ply", drop, tmp_path / "bad.ply")
    with pytest.raises(DataError, match=f"bad.ply: vertex property '{drop}' is missing"):
        read_gaussian_ply(bad)


def test_not_a_gaussian_ply(tmp_path):
    (tmp_path / "text.ply").write_text("hello\n")
    with pytest.raises(DataError, match="text.ply: not a readable PLY"):
        read_gaussian_ply(tmp_path / "text.ply")
    # A mesh PLY: vertices without Gaussian properties.
    points = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "mesh.ply"))
    with pytest.raises(DataError, match="mesh.ply: vertex property 'f_dc_0' is missing"):
        read_gaussian_ply(tmp_path / "mesh.ply")


def test_writer_checks_shapes(tmp_path):
    g = random_gaussians(5, 1)
    with pytest.raises(ValueError, match="not \\(d \\+ 1\\)²"):
        write_gaussian_ply(tmp_path / "x.ply", **{**g, "sh": torch.zeros(5, 3, 3)})
    with pytest.raises(ValueError, match="'quats' has shape \\(4, 4\\), expected \\[5, 4\\]"):
        write_gaussian_ply(tmp_path / "x.ply", **{**g, "quats": torch.zeros(4, 4)})
    assert not (tmp_path / "x.ply").exists()


# ----------------------------------------------------------------------------- face OBJ
def smooth_like_trained(model: NeuralFace) -> NeuralFace:
    """Give the model what training would: a diffuse texture and UV encoding that vary smoothly
    over a texel, an output layer far from SIREN's near-zero start (else every texel decodes to
    grey), and a displacement decoder off zero."""
    torch.manual_seed(3)
    with torch.no_grad():
        size, channels = model.diffuse_texture.shape[-1], model.diffuse_texture.shape[1]
        centres = (torch.arange(size) + 0.5) / size
        v, u = torch.meshgrid(centres, centres, indexing="ij")
        a, b = torch.randint(0, 3, (channels, 1, 1)), torch.randint(1, 3, (channels, 1, 1))
        phase = torch.rand(channels, 1, 1) * 2 * math.pi
        model.diffuse_texture.copy_(torch.sin(2 * math.pi * (a * u + b * v) + phase)[None])
        s = torch.linspace(0, 1, model.uv_encoding.table_u.shape[0])
        model.uv_encoding.table_u.copy_(torch.stack([torch.sin(3 * s), torch.cos(2 * s)], 1))
        model.uv_encoding.table_v.copy_(torch.stack([torch.cos(4 * s), torch.sin(2 * s + 1)], 1))
        model.pixel_decoder.out.weight.normal_()
        model.displacement_decoder.blocks[-1].expand.weight.normal_()
        model.displacement_decoder.blocks[-1].expand.bias.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def face(toy_head) -> NeuralFace:
    torch.manual_seed(0)  # the weights smooth_like_trained leaves alone, whatever ran before
    return smooth_like_trained(NeuralFace(toy_head, SMALL_FACE))


@pytest.fixture(scope="module")
def frames() -> FrameParameters:
    rng = np.random.default_rng(0)
    params = {t: {"shape": rng.normal(size=300) * 0.5, "expr": rng.normal(size=100) * 0.5,
                  "rotation": rng.normal(size=3) * 0.1, "neck_pose": np.zeros(3), "jaw_pose": np.array([0.2, 0, 0]),
                  "eyes_pose": np.zeros(6), "translation": np.array([0.01, -0.02, 0.03])} for t in range(2)}
    return FrameParameters(params)


def lookup(texture_rgb: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a [T, T, 3] texture at uv [N, 2] (package convention, v down)."""
    return texture_at(texture_rgb.permute(2, 0, 1)[None], uv, torch.zeros(len(uv), dtype=torch.long))


def flip_v(uv: torch.Tensor) -> torch.Tensor:
    return uv * uv.new_tensor([1.0, -1.0]) + uv.new_tensor([0.0, 1.0])


def test_diffuse_texture_is_what_forward_decodes(face):
    """``rgb_diffuse`` decodes bilinearly interpolated features; the exported texture is decoded
    at texel centres and then interpolated. With a texture smooth over a texel the two agree to
    a few 1/255; the texture read upside down does not."""
    texture_rgb = diffuse_texture_rgb(face)
    assert texture_rgb.shape == (64, 64, 3)
    assert float(texture_rgb.min()) >= 0 and float(texture_rgb.max()) <= 1 and float(texture_rgb.std()) > 0.1
    camera = Camera.stack([nersemble_like_rig(48, 64, 16)[8]])
    with torch.no_grad():
        flame = flame_parameters(face, None, None)
        out = face(flame, camera)
    mask = out["mask"][:, 0]
    uv = interpolate(face.mesh.uvs[None], out["rast"], face.mesh.faces_uv)[mask]
    rendered = out["rgb_diffuse"].permute(0, 2, 3, 1)[mask]
    assert len(uv) > 200
    error = (lookup(texture_rgb, uv) - rendered).abs().mean()
    error_flipped = (lookup(texture_rgb, flip_v(uv)) - rendered).abs().mean()
    assert float(error) < 0.03
    assert float(error_flipped) > 5 * float(error)
    # At texel centres the two decodings coincide exactly.
    texel = torch.tensor([[10.5, 20.5], [40.5, 3.5]]) / 64
    features = texture_at(face.diffuse_texture, texel, torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        direct = face.pixel_decoder(torch.cat([face.uv_encoding(texel), features], 1))
    torch.testing.assert_close(direct, texture_rgb[[20, 3], [10, 40]])


def test_diffuse_texture_decodes_in_chunks(face):
    # Batched matrix products may round differently in the last bit, nothing more.
    torch.testing.assert_close(diffuse_texture_rgb(face, chunk=1000), diffuse_texture_rgb(face))


def corner_pairs(face: NeuralFace) -> np.ndarray:
    return np.stack([face.mesh.faces.numpy(), face.mesh.faces_uv.numpy()], axis=2).reshape(-1, 2)


def test_face_export_reads_back_in_trimesh(face, frames, tmp_path):
    paths = export_face_mesh(face, frames, 1, tmp_path / "export")
    assert {k: p.name for k, p in paths.items()} == {"obj": "face.obj", "mtl": "face.mtl", "png": "face_diffuse.png"}
    assert not list((tmp_path / "export").glob(".*tmp*"))  # no temporary file left behind
    with torch.no_grad():
        vertices = face.geometry(frames(torch.tensor([1])))[0][0].numpy()
        vertices_flame = face.geometry(frames(torch.tensor([1])))[1][0].numpy()
    assert np.abs(vertices - vertices_flame).max() > 1e-5  # the refined mesh, not FLAME's
    faces, faces_uv = face.mesh.faces.numpy(), face.mesh.faces_uv.numpy()

    mesh = trimesh.load(paths["obj"], process=False)
    assert isinstance(mesh, trimesh.Trimesh)
    # An OBJ vertex carries one UV, so readers split the model's vertices along UV seams: one
    # vertex per distinct (position, UV) corner pair. The count is therefore the model's
    # vertex count plus the seam copies, and every corner has the model's position and UV.
    assert len(mesh.faces) == len(faces)
    assert face.mesh.n_vertices <= len(mesh.vertices) == len(np.unique(corner_pairs(face), axis=0))
    assert set(np.unique(faces)) == set(range(face.mesh.n_vertices))
    np.testing.assert_allclose(mesh.vertices[mesh.faces], vertices[faces], atol=1e-7)
    uv_obj = mesh.visual.uv
    assert uv_obj.min() >= 0 and uv_obj.max() <= 1
    np.testing.assert_allclose(uv_obj[mesh.faces], flip_v(face.mesh.uvs).numpy()[faces_uv], atol=1e-6)

    texture_rgb = diffuse_texture_rgb(face)
    png = np.asarray(Image.open(paths["png"]))
    assert png.shape == (64, 64, 3) and png.dtype == np.uint8
    np.testing.assert_array_equal(png, (texture_rgb * 255).round().to(torch.uint8).numpy())
    # Right way up: trimesh's own sampling of its material at the OBJ's UVs (nearest texel)
    # matches the texture read at the package's UVs; upside down it would not.
    image = mesh.visual.material.image
    assert image.size == (64, 64)
    sampled = trimesh.visual.uv_to_color(uv_obj, image)[:, :3] / 255.0
    expected = lookup(texture_rgb, flip_v(torch.as_tensor(uv_obj, dtype=torch.float32))).numpy()
    upside_down = lookup(texture_rgb, torch.as_tensor(uv_obj, dtype=torch.float32)).numpy()
    # trimesh rounds u · (W − 1) to a texel: up to a texel away from the bilinear lookup.
    error = np.abs(sampled - expected).mean()
    assert error < 0.06
    assert np.abs(sampled - upside_down).mean() > 3 * error


def test_canonical_export_has_zero_expression_and_pose(face, frames, tmp_path):
    export_face_mesh(face, frames, None, tmp_path)
    mesh = trimesh.load(tmp_path / "face.obj", process=False)
    zero = {"shape": frames.shape.detach(), "expr": torch.zeros(1, 100), "rotation": torch.zeros(1, 3),
            "neck_pose": torch.zeros(1, 3), "jaw_pose": torch.zeros(1, 3), "eyes_pose": torch.zeros(1, 6),
            "translation": torch.zeros(1, 3)}
    with torch.no_grad():
        vertices = face.geometry(zero)[0][0].numpy()
    np.testing.assert_allclose(mesh.vertices[mesh.faces], vertices[face.mesh.faces.numpy()], atol=1e-7)
    with pytest.raises(DataError, match="timestep index 5"):
        export_face_mesh(face, frames, 5, tmp_path / "none")


def test_export_face_command(toy_head, face, frames, tmp_path):
    head_dir, run_dir, out_dir = tmp_path / "head_model", tmp_path / "run", tmp_path / "export"
    write_head_model(head_dir, toy_head)
    save_checkpoint(run_dir / "face.pt", {"model": face.state_dict(), "frames": frames.state_dict(),
                                          "config": SMALL_FACE.to_dict(), "variant": "mega", "iterations": 0})
    assert main(["export-face", str(run_dir), "--head-model", str(head_dir), "--out", str(out_dir),
                 "--timestep-index", "0"]) == 0
    mesh = trimesh.load(out_dir / "face.obj", process=False)
    with torch.no_grad():
        vertices = face.geometry(frames(torch.tensor([0])))[0][0].numpy()
    np.testing.assert_allclose(mesh.vertices[mesh.faces], vertices[face.mesh.faces.numpy()], atol=1e-6)
    assert main(["export-face", str(tmp_path / "missing"), "--head-model", str(head_dir), "--out", str(out_dir)]) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_named_not_a_traceback(toy_head, face, frames, tmp_path, capsys, damage):
    """The one checkpoint reader turns a cut-short or corrupt file into an error that names it,
    for every command (here export-face on face.pt, render on joint.pt)."""
    head_dir, run_dir = tmp_path / "head_model", tmp_path / "run"
    write_head_model(head_dir, toy_head)
    save_checkpoint(run_dir / "face.pt", {"model": face.state_dict(), "frames": frames.state_dict(),
                                          "config": SMALL_FACE.to_dict(), "variant": "mega", "iterations": 0})
    whole = (run_dir / "face.pt").read_bytes()
    damaged = {"truncated": whole[: len(whole) // 2], "garbage": b"not a checkpoint" * 100, "empty": b""}[damage]
    (run_dir / "face.pt").write_bytes(damaged)
    (run_dir / "joint.pt").write_bytes(damaged)
    (run_dir / "hair.pt").write_bytes(whole)
    assert main(["export-face", str(run_dir), "--head-model", str(head_dir), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{run_dir / 'face.pt'}: not a readable checkpoint" in error and "Traceback" not in error
    assert main(["render", str(run_dir), str(tmp_path / "union"), "--head-model", str(head_dir), "--rigid",
                 str(tmp_path / "rigid.npz"), "--out", str(tmp_path / "renders"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert f"{run_dir / 'joint.pt'}: not a readable checkpoint" in error and "truncated or corrupt" in error
