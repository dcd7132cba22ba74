"""The whole avatar on CUDA against the same training on the CPU: two steps of each stage and
their evaluation, with the torch and the triton Gaussian backends on the GPU; the same for the
GaussianAvatars baseline. Runs where CUDA is
(the GPU checks of docs/benchmarks.md); the same stages are tested on the CPU in test_face.py and
test_hair.py.

Both devices start from the same weights (made on the CPU from the seed) and draw the same
batches, so their losses differ only by arithmetic: the first step's to 0.1–0.5%, the second's
(after an Adam step, which can turn a near-zero gradient's sign) to 3%. The face stage is
compared twice: with the torch mesh backend on both devices (tight), and with nvdiffrast on the
GPU, which decides silhouette pixels on a 1/16-pixel grid and so moves a few of them (loose);
the hair stages' face renders use nvdiffrast (`auto`).
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mega.gaussianavatars.config import GaussianAvatarsConfig
from mega.geometry import fit_similarity
from mega.hair import rigid as hair_rigid
from mega.train.face import train_face
from mega.train.gaussianavatars import train_gaussianavatars
from mega.train.hair import train_hair
from mega.train.joint import train_joint
from test_gaussianavatars import TINY as TINY_BASELINE
from test_hair import TINY_FACE, TINY_HAIR, tiny_subject

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def closed_form_fit(source: np.ndarray, target: np.ndarray, max_distance_m: float = 0.01,
                    with_scaling: bool = False, max_iterations: int = 50):
    """What rigid_icp starts from, without open3d (which GPU machines may lack): ICP is tested in
    test_hair_rigid.py; here only the hair's stages are."""
    R, t = fit_similarity(source, target, with_scaling)
    return R, t, float(np.sqrt(np.mean(np.sum((source @ R.T + t - target) ** 2, axis=1))))


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """(UNION folder, head model, hair_rigid.npz, stage-1 run folders: 'cpu', 'cuda' with the
    torch mesh backend, 'nvdiffrast' on CUDA)."""
    root = tmp_path_factory.mktemp("cuda")
    union, head = tiny_subject(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hair_rigid, "rigid_icp", closed_form_fit)
        hair_rigid.compute_hair_rigid(union, head, root / "hair_rigid.npz")
    runs = {}
    for name, device, mesh_backend in (("cpu", "cpu", "auto"), ("cuda", "cuda", "torch"),
                                       ("nvdiffrast", "cuda", "cuda")):
        runs[name] = root / f"face_{name}"
        train_face(union, head, runs[name], TINY_FACE.replace(backend=mesh_backend), device=device, progress=False)
    return union, head, root / "hair_rigid.npz", runs


@pytest.fixture(scope="module")
def cpu_avatar(subject, tmp_path_factory):
    """Run folder of the hair and joint stages on the CPU, and the joint stage's metrics."""
    union, head, rigid, runs = subject
    out = tmp_path_factory.mktemp("cpu_avatar")
    train_hair(union, runs["cpu"] / "face.pt", rigid, out, head, TINY_HAIR, device="cpu", progress=False)
    metrics = train_joint(union, runs["cpu"] / "face.pt", out / "hair.pt", rigid, out, head, TINY_HAIR,
                          device="cpu", progress=False)
    return out, metrics


def losses(run_dir, stage: str) -> pd.Series:
    return pd.read_csv(run_dir / stage / "loss.csv")["total"]


def assert_same_training(cpu_dir, cuda_dir, stage: str, first_rtol: float, second_rtol: float = 3e-2) -> None:
    cpu, cuda = losses(cpu_dir, stage), losses(cuda_dir, stage)
    assert len(cpu) == len(cuda) == 2
    assert np.isfinite(cuda).all()
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=first_rtol, err_msg=f"{stage}: first step's loss")
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=second_rtol, err_msg=f"{stage}: second step's loss")


@pytest.mark.parametrize("run, first_rtol, psnr_db, depth_mm", [("cuda", 1e-3, 0.1, 0.15),
                                                                ("nvdiffrast", 1e-2, 0.3, 0.5)])
def test_face_stage_on_cuda_matches_the_cpu(subject, run, first_rtol, psnr_db, depth_mm):
    _, _, _, runs = subject
    assert_same_training(runs["cpu"], runs[run], "face", first_rtol)
    cpu = json.loads((runs["cpu"] / "face" / "metrics.json").read_text())
    cuda = json.loads((runs[run] / "face" / "metrics.json").read_text())
    assert cuda["device"].startswith("cuda")
    for split in ("val", "test"):
        assert abs(cuda[split]["psnr_head"] - cpu[split]["psnr_head"]) < psnr_db, split
        assert abs(cuda[split]["depth_mae_face_mm"] - cpu[split]["depth_mae_face_mm"]) < depth_mm, split


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hair_and_joint_stages_on_cuda_match_the_cpu(subject, cpu_avatar, tmp_path, backend):
    union, head, rigid, runs = subject
    cpu_dir, cpu_metrics = cpu_avatar
    face = runs["cpu"] / "face.pt"  # both devices continue from the same stage-1 face
    config = TINY_HAIR.replace(gaussian_backend=backend)
    train_hair(union, face, rigid, tmp_path, head, config, device="cuda", progress=False)
    metrics = train_joint(union, face, tmp_path / "hair.pt", rigid, tmp_path, head, config, device="cuda",
                          progress=False)
    for stage in ("hair", "joint"):
        assert_same_training(cpu_dir, tmp_path, stage, first_rtol=5e-3)
    for split in ("val", "test"):
        cpu, cuda = cpu_metrics[split], metrics[split]
        assert abs(cuda["psnr_head_paper"] - cpu["psnr_head_paper"]) < 0.2, split
        assert abs(cuda["hair_iou"] - cpu["hair_iou"]) < 0.02, split


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gaussianavatars_baseline_on_cuda_matches_the_cpu(subject, tmp_path, backend):
    """The baseline's two steps (Gaussians bound to the posed FLAME triangles, per-frame FLAME
    fine-tuning) on CUDA against the CPU, from the same initial Gaussians and batches."""
    union, head, _, _ = subject
    config = GaussianAvatarsConfig(iterations_images=2, gaussian_backend=backend, **TINY_BASELINE)
    cpu = train_gaussianavatars(union, head, tmp_path / "cpu", config.replace(gaussian_backend="auto"), device="cpu",
                                progress=False)
    cuda = train_gaussianavatars(union, head, tmp_path / "cuda", config, device="cuda", progress=False)
    assert cuda["device"].startswith("cuda")
    assert_same_training(tmp_path / "cpu", tmp_path / "cuda", "gaussianavatars", first_rtol=5e-3)
    assert abs(cuda["training_views"]["psnr"] - cpu["training_views"]["psnr"]) < 0.1
