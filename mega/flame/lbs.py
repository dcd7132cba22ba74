"""Batched linear blend skinning for FLAME-format models, in torch.

Shapes use B for the batch, V vertices, J joints (5 for FLAME), K blendshape components.
Everything is differentiable in every input; device and dtype follow the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula. axis_angle [..., 3] (radians) → rotation matrices [..., 3, 3].

    The small offset inside the norm keeps the gradient finite at zero rotation, where the
    rotation axis is undefined.
    """
    angle = torch.linalg.vector_norm(axis_angle + 1e-8, dim=-1, keepdim=True)  # [..., 1]
    axis = axis_angle / angle
    cos = torch.cos(angle)[..., None]
    sin = torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sin * skew + (1 - cos) * (skew @ skew)


def rigid_transforms(rotations: Tensor, joints: Tensor, parents: list[int]) -> tuple[Tensor, Tensor]:
    """Forward kinematics.

    rotations [B, J, 3, 3] local joint rotations, joints [B, J, 3] rest joint positions,
    parents: J ints, -1 for the root (parents precede children).
    Returns posed joints [B, J, 3] and the skinning transforms [B, J, 4, 4] that map rest-pose
    points to posed points.
    """
    B, J = joints.shape[:2]
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([rotations, rel_joints[..., None]], dim=-1)  # [B, J, 3, 4]
    bottom = torch.zeros(B, J, 1, 4, dtype=joints.dtype, device=joints.device)
    bottom[..., 3] = 1
    local = torch.cat([local, bottom], dim=-2)  # [B, J, 4, 4]
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]
    posed_joints = world[:, :, :3, 3]
    # Remove the rest-pose joint position so the transform applies to rest-pose vertices.
    rest = torch.cat([joints, torch.zeros_like(joints[..., :1])], dim=-1)[..., None]  # [B, J, 4, 1]
    skinning = world - torch.nn.functional.pad(world @ rest, (3, 0))
    return posed_joints, skinning


def linear_blend_skinning(
    coefficients: Tensor,  # [B, K] shape then expression coefficients
    pose: Tensor,  # [B, J * 3] axis-angle per joint, root first
    v_template: Tensor,  # [V, 3]
    shapedirs: Tensor,  # [V, 3, K]
    posedirs: Tensor,  # [V, 3, (J - 1) * 9]
    J_regressor: Tensor,  # [J, V]
    parents: list[int],
    lbs_weights: Tensor,  # [V, J]
) -> tuple[Tensor, Tensor]:
    """FLAME/SMPL skinning. Returns posed vertices [B, V, 3] and posed joints [B, J, 3]."""
    B = coefficients.shape[0]
    J = J_regressor.shape[0]
    v_shaped = v_template + torch.einsum("bk,vck->bvc", coefficients, shapedirs)  # [B, V, 3]
    joints = torch.einsum("jv,bvc->bjc", J_regressor, v_shaped)  # [B, J, 3]
    rotations = axis_angle_to_matrix(pose.reshape(B, J, 3))  # [B, J, 3, 3]
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rotations[:, 1:] - eye).reshape(B, -1)  # [B, (J-1)*9]
    v_posed = v_shaped + torch.einsum("bp,vcp->bvc", pose_feature, posedirs)
    posed_joints, skinning = rigid_transforms(rotations, joints, parents)
    per_vertex = torch.einsum("vj,bjmn->bvmn", lbs_weights, skinning)  # [B, V, 4, 4]
    verts = (per_vertex[..., :3, :3] @ v_posed[..., None])[..., 0] + per_vertex[..., :3, 3]
    return verts, posed_joints
