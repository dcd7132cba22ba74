"""Linear blend skinning: template at zero, gradients, rotations, dtype and device."""

import numpy as np
import pytest
import torch

from mega.flame import FlameModel
from mega.flame.lbs import axis_angle_to_matrix

from conftest import tiny_head


def test_zero_parameters_return_the_template(toy_head, toy_enhanced):
    for head in (toy_head, toy_enhanced):
        model = FlameModel(head)
        verts = model(shape=torch.zeros(2, 300), expr=torch.zeros(2, 100))
        assert verts.shape == (2, head.n_vertices, 3)
        torch.testing.assert_close(verts[1], torch.as_tensor(head.v_template, dtype=torch.float32), atol=1e-6, rtol=0)


def test_gradients_are_finite_for_every_parameter(toy_enhanced):
    model = FlameModel(toy_enhanced)
    params = {"shape": torch.zeros(1, 300), "expr": torch.zeros(1, 100), "rotation": torch.zeros(1, 3),
              "neck_pose": torch.zeros(1, 3), "jaw_pose": torch.zeros(1, 3), "eyes_pose": torch.zeros(1, 6),
              "translation": torch.zeros(1, 3)}
    for start in ("zero", "random"):
        leaves = {k: (v + (0.1 * torch.randn_like(v) if start == "random" else 0)).requires_grad_() for k, v in params.items()}
        verts = model(**leaves)
        (verts * torch.linspace(-1, 1, verts.numel()).reshape(verts.shape)).sum().backward()
        for name, leaf in leaves.items():
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), name
            assert leaf.grad.abs().sum() > 0, f"{name} has no influence"


def test_gradcheck_float64():
    model = FlameModel(tiny_head())
    inputs = tuple(torch.randn(1, n, dtype=torch.float64, requires_grad=True) * s
                   for n, s in ((3, 1.0), (2, 1.0), (3, 0.3), (3, 0.3), (3, 0.3), (6, 0.3), (3, 0.1)))
    inputs = tuple(t.detach().requires_grad_() for t in inputs)

    def fn(shape, expr, rotation, neck, jaw, eyes, translation):
        return model(shape=shape, expr=expr, rotation=rotation, neck_pose=neck, jaw_pose=jaw,
                     eyes_pose=eyes, translation=translation)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_dtype_follows_inputs():
    model = FlameModel(tiny_head())
    out = model(shape=torch.zeros(1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.device.type == "cpu"


def test_global_rotation_rotates_about_the_root(toy_head):
    model = FlameModel(toy_head)
    rotation = torch.tensor([[0.0, 0.7, 0.0]])
    rest, joints = model(rotation=torch.zeros(1, 3), return_joints=True)
    turned = model(rotation=rotation)
    R = axis_angle_to_matrix(rotation)[0]
    root = joints[0, 0]
    expected = (rest[0] - root) @ R.T + root
    torch.testing.assert_close(turned[0], expected, atol=1e-5, rtol=0)


def test_translation_is_added_after_skinning(toy_head):
    model = FlameModel(toy_head)
    t = torch.tensor([[0.01, -0.02, 0.3]])
    torch.testing.assert_close(model(translation=t)[0] - t, model(translation=torch.zeros(1, 3))[0])


def test_jaw_pose_moves_the_lower_lip_only(toy_head):
    model = FlameModel(toy_head)
    rest = model(jaw_pose=torch.zeros(1, 3))[0]
    opened = model(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))[0]
    moved = (opened - rest).norm(dim=1)
    upper = torch.as_tensor(toy_head.lip_ring_upper[1:-1])
    lower = torch.as_tensor(toy_head.lip_ring_lower[1:-1])
    assert moved[lower].max() > 0.01 and moved[lower].min() > 0.001  # lower lip drops, least at the corners
    assert moved[upper].max() < 1e-3
    scalp = torch.as_tensor(toy_head.regions["scalp"])
    assert moved[scalp].max() < 1e-6


def test_wrong_parameter_shape_is_named():
    model = FlameModel(tiny_head())
    with pytest.raises(ValueError, match=r"'jaw_pose' has shape \(1, 4\), expected \(1, 3\)"):
        model(jaw_pose=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"'shape'.*expected \(B, <= 3\)"):
        model(shape=torch.zeros(1, 4))


def test_rodrigues_matches_scipy():
    from scipy.spatial.transform import Rotation

    aa = np.random.default_rng(0).normal(size=(8, 3))
    ours = axis_angle_to_matrix(torch.as_tensor(aa)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(aa).as_matrix(), atol=1e-7)
