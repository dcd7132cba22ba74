"""The whole avatar on CUDA against the same training on the CPU: two steps of each stage and
their evaluation, with the torch and the triton Gaussian backends on the GPU. Runs where CUDA is
(the GPU checks of docs/benchmarks.md); the same stages are tested on the CPU in test_face.py and
test_hair.py.

Both devices start from the same weights (made on the CPU from the seed) and draw the same
batches, so their losses differ only by arithmetic and, on the mesh's silhouette, by nvdiffrast
(which `auto` picks on CUDA) breaking ties otherwise than the torch mesh backend: the first
step's losses to 0.5%, the second's (after an Adam step, which can amplify a difference) to 3%.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mega.geometry import fit_similarity
from mega.hair import rigid as hair_rigid
from mega.train.face import train_face
from mega.train.hair import train_hair
from mega.train.joint import train_joint
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
    """(UNION folder, head model, hair_rigid.npz, the stage-1 run folders on 'cpu' and 'cuda')."""
    root = tmp_path_factory.mktemp("cuda")
    union, head = tiny_subject(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hair_rigid, "rigid_icp", closed_form_fit)
        hair_rigid.compute_hair_rigid(union, head, root / "hair_rigid.npz")
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = root / f"face_{device}"
        train_face(union, head, runs[device], TINY_FACE, device=device, progress=False)
    return union, head, root / "hair_rigid.npz", runs


def losses(run_dir, stage: str) -> pd.Series:
    return pd.read_csv(run_dir / stage / "loss.csv")["total"]


def assert_same_training(cpu_dir, cuda_dir, stage: str) -> None:
    cpu, cuda = losses(cpu_dir, stage), losses(cuda_dir, stage)
    assert len(cpu) == len(cuda) == 2
    assert np.isfinite(cuda).all()
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=5e-3, err_msg=f"{stage}: first step's loss")
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=3e-2, err_msg=f"{stage}: second step's loss")


def test_face_stage_on_cuda_matches_the_cpu(subject):
    _, _, _, runs = subject
    assert_same_training(runs["cpu"], runs["cuda"], "face")
    cpu = json.loads((runs["cpu"] / "face" / "metrics.json").read_text())
    cuda = json.loads((runs["cuda"] / "face" / "metrics.json").read_text())
    assert cuda["device"].startswith("cuda")
    for split in ("val", "test"):
        assert abs(cuda[split]["psnr_head"] - cpu[split]["psnr_head"]) < 0.1, split
        assert abs(cuda[split]["depth_mae_face_mm"] - cpu[split]["depth_mae_face_mm"]) < 0.05, split


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hair_and_joint_stages_on_cuda_match_the_cpu(subject, tmp_path, backend):
    union, head, rigid, runs = subject
    face = runs["cpu"] / "face.pt"  # both devices continue from the same stage-1 face
    metrics = {}
    for device, config in (("cpu", TINY_HAIR), ("cuda", TINY_HAIR.replace(gaussian_backend=backend))):
        out = tmp_path / device
        train_hair(union, face, rigid, out, head, config, device=device, progress=False)
        metrics[device] = train_joint(union, face, out / "hair.pt", rigid, out, head, config, device=device,
                                      progress=False)
    for stage in ("hair", "joint"):
        assert_same_training(tmp_path / "cpu", tmp_path / "cuda", stage)
    for split in ("val", "test"):
        cpu, cuda = metrics["cpu"][split], metrics["cuda"][split]
        assert abs(cuda["psnr_head_paper"] - cpu["psnr_head_paper"]) < 0.2, split
        assert abs(cuda["hair_iou"] - cpu["hair_iou"]) < 0.02, split
