"""Cameras: OpenGL → OpenCV conversion, projection with off-centre principal points."""

import numpy as np
import torch

from mega.data.camera import Camera, opencv_to_opengl_c2w
from mega.data.rig import FRONTAL_CAMERA, nersemble_like_rig


def test_opengl_json_camera_converts_once():
    # OpenGL camera at (0, 0, 1) looking down -z at the origin: identity rotation.
    c2w_gl = np.eye(4)
    c2w_gl[2, 3] = 1.0
    cam = Camera.from_opengl(1000.0, 1000.0, 300.0, 410.0, c2w_gl, 550, 802)
    torch.testing.assert_close(cam.center, torch.tensor([0.0, 0.0, 1.0]))
    # A point up and to the right in the world lands right of and above the principal point.
    pixels, depth = cam.project(torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.0]]))
    torch.testing.assert_close(pixels[0], torch.tensor([300.0, 410.0]))  # off-centre principal point
    assert pixels[1, 0] > 300 and pixels[1, 1] < 410
    torch.testing.assert_close(depth, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(pixels[1], torch.tensor([400.0, 310.0]))


def test_rig_looks_at_the_head_with_camera_8_frontal():
    rig = nersemble_like_rig(550, 802)
    assert len(rig) == 16
    target = torch.tensor([[0.0, -0.02, 0.0]])
    for cam in rig:
        pixels, depth = cam.project(target)
        assert depth.item() > 0.5
        torch.testing.assert_close(pixels[0], cam.intrinsics[:2, 2], atol=1e-3, rtol=0)
    centers = torch.stack([c.center for c in rig])
    assert torch.argmax(centers[:, 2]).item() == FRONTAL_CAMERA  # furthest along +z, facing the face
    assert abs(rig[FRONTAL_CAMERA].center[0].item()) < 1e-6


def test_round_trip_through_json_convention():
    cam = nersemble_like_rig(64, 96)[3]
    c2w_gl = opencv_to_opengl_c2w(np.linalg.inv(cam.world_to_camera.double().numpy()))
    K = cam.intrinsics
    again = Camera.from_opengl(K[0, 0], K[1, 1], K[0, 2], K[1, 2], c2w_gl, 64, 96)
    torch.testing.assert_close(again.world_to_camera, cam.world_to_camera, atol=1e-6, rtol=0)
    batch = Camera.stack([cam, again])
    assert batch.intrinsics.shape == (2, 3, 3)
    assert batch.project(torch.zeros(2, 5, 3))[0].shape == (2, 5, 2)


def test_resized_camera_scales_pixel_positions():
    import torch

    from mega.data.rig import nersemble_like_rig

    camera = nersemble_like_rig(550, 802)[3]
    small = camera.resized(138, 200)
    assert (small.width, small.height) == (138, 200)
    points = torch.tensor([[0.03, 0.05, 0.02], [-0.04, -0.1, 0.06]])
    big_px, big_z = camera.project(points)
    small_px, small_z = small.project(points)
    torch.testing.assert_close(small_px, big_px * torch.tensor([138 / 550, 200 / 802]))
    torch.testing.assert_close(small_z, big_z)
