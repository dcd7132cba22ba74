"""What the hair stages do for subjects other than the default one: the initialisation from the
canonical views (colours from the images, points in the visual hull of the hair masks) and the
joint stage's option to keep the face out of the hair pixels."""

import math

import numpy as np
import pytest
import torch

from mega.data.camera import Camera
from mega.data.rig import look_at_world_to_camera
from mega.errors import ConfigError
from mega.hair.config import HairConfig
from mega.hair.views_init import CanonicalViews, connected_to_scalp

SIZE = 64
FOCAL = 80.0


def camera_at(eye) -> Camera:
    K = torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1]])
    return Camera(K, torch.as_tensor(look_at_world_to_camera(np.asarray(eye, float), np.zeros(3)), dtype=torch.float32),
                  SIZE, SIZE)


def two_views(hair_half_m=0.1, mesh_depth=math.inf, colour=(0.8, 0.2, 0.1)) -> CanonicalViews:
    """A front (on +z) and a side camera (on +x), 1 m from the origin; in each the hair mask is the
    image of the cube |x|, |y|, |z| ≤ hair_half_m around the origin (a square of ±8 px), the
    image is ``colour`` on the hair and grey elsewhere, and the mesh depth is constant."""
    cameras = [camera_at([0, 0, 1.0]), camera_at([1.0, 0, 0])]
    half_px = FOCAL * hair_half_m / 1.0
    centre = torch.arange(SIZE) + 0.5 - SIZE / 2
    square = (centre.abs()[:, None] <= half_px) & (centre.abs()[None] <= half_px)
    hair = square.expand(2, -1, -1).clone()
    images = torch.full((2, 3, SIZE, SIZE), 0.5)
    images[:, :, square] = torch.tensor(colour)[:, None]
    depth = torch.full((2, SIZE, SIZE), float(mesh_depth))
    return CanonicalViews(Camera.stack(cameras), images, hair, depth)


def test_points_take_the_colour_of_the_hair_they_project_to():
    views = two_views()
    points = torch.tensor([[0.0, 0.0, 0.0], [0.05, -0.05, 0.02]])
    colours, seen = views.colours(points)
    assert seen.all()
    assert torch.allclose(colours, torch.tensor([[0.8, 0.2, 0.1]]).expand(2, -1), atol=1e-6)


def test_a_point_off_the_hair_or_hidden_by_the_mesh_takes_the_mean_hair_colour():
    views = two_views(colour=(0.8, 0.2, 0.1))
    views.images[1, :, views.hair[1]] = torch.tensor([0.2, 0.4, 0.6])[:, None]  # the side view's hair: another colour
    mean = torch.tensor([0.5, 0.3, 0.35])
    outside = torch.tensor([[0.3, 0.3, 0.0]])  # projects off the hair in both views
    colours, seen = views.colours(outside)
    assert not seen.any()
    assert torch.allclose(colours[0], mean, atol=1e-6)
    hidden = two_views(mesh_depth=0.5)  # a surface 0.5 m from each camera hides the cube
    colours, seen = hidden.colours(torch.zeros(1, 3))
    assert not seen.any()


def test_hull_points_lie_where_every_view_sees_hair():
    views = two_views(hair_half_m=0.1)
    low, high = torch.full((3,), -0.3), torch.full((3,), 0.3)
    points = views.hull_points(2000, low, high, torch.Generator().manual_seed(0))
    assert points.shape == (2000, 3)
    # Front view: x, y within the square (perspective widens it by at most 1/(1 - 0.3)); side: z, y.
    limit = 0.1 / (1 - 0.3) + 2 / FOCAL
    assert points[:, 0].abs().max() <= limit and points[:, 1].abs().max() <= limit
    assert points[:, 2].abs().max() <= limit
    # and they fill it: a quarter of the points on each side of every axis, roughly.
    assert (points > 0).float().mean(0).sub(0.5).abs().max() < 0.05


def test_the_inside_of_a_head_hidden_in_every_view_is_not_hull():
    views = two_views(hair_half_m=0.1, mesh_depth=0.95)  # every point deeper than 0.955 m is hidden
    low, high = torch.full((3,), -0.1), torch.full((3,), 0.1)
    points = views.hull_points(500, low, high, torch.Generator().manual_seed(0), max_rounds=3)
    # Kept points are seen in front of the surface by at least one camera: within 0.055 m of it.
    seen_front = points[:, 2] >= 1.0 - 0.955 - 1e-6
    seen_side = points[:, 0] >= 1.0 - 0.955 - 1e-6
    assert (seen_front | seen_side).all()
    assert points.shape[0] == 500


def test_an_empty_hull_gives_no_points():
    views = two_views()
    views.hair.zero_()
    points = views.hull_points(10, torch.full((3,), -0.3), torch.full((3,), 0.3), torch.Generator().manual_seed(0),
                               candidates_per_round=1000, max_rounds=2)
    assert points.shape == (0, 3)


def test_hull_points_not_joined_to_the_scalp_are_ghosts():
    """With few views the visual hull has ghosts: blobs off the head that every view's hair
    silhouette covers by chance (cams9, 8 training views: one 10 cm from the hair, a floater in
    the novel view). Hair grows from the scalp: the hull points joined to it through the hull stay,
    however far they hang (long hair), and a blob apart goes."""
    generator = torch.Generator().manual_seed(0)
    scalp = torch.rand(500, 3, generator=generator) * torch.tensor([0.1, 0.002, 0.1])  # a patch at y = 0
    mass = torch.rand(1500, 3, generator=generator) * torch.tensor([0.1, 0.04, 0.1]) + torch.tensor([0, 0.002, 0])
    strand = torch.rand(300, 3, generator=generator) * torch.tensor([0.01, 0.2, 0.01]) - torch.tensor([0, 0.2, 0])
    ghost = torch.rand(100, 3, generator=generator) * 0.02 + torch.tensor([0.2, 0.0, 0.0])
    hull = torch.cat([mass, strand, ghost])
    joined = connected_to_scalp(scalp, hull)
    assert bool(joined[:1800].all()) and not bool(joined[1800:].any())
    assert connected_to_scalp(scalp, hull[:0]).shape == (0,)
    assert not connected_to_scalp(scalp[:0], hull).any()
    assert bool(connected_to_scalp(scalp, torch.tensor([[0.05, 0.01, 0.05]])).all())  # one point, on the scalp


def test_views_must_match_their_images():
    views = two_views()
    with pytest.raises(ValueError, match="must be"):
        CanonicalViews(views.cameras, views.images[:, :, :10], views.hair, views.mesh_depth)


def test_the_settings_name_the_bad_field():
    with pytest.raises(ConfigError, match="init_colour"):
        HairConfig(init_colour="sampled").check("hair")
    with pytest.raises(ConfigError, match="init_in_hull"):
        HairConfig(init_in_hull=-1).check("hair")
    HairConfig(init_on_scalp=0, init_off_scalp=0, init_in_hull=10).check("hair")


# ----------------------------------------------------------------------------- on a subject
@pytest.fixture(scope="module")
def subject_views(tmp_path_factory):
    """(face, frames, canonical timestep, CanonicalViews) of a tiny synthetic subject's face."""
    from test_hair import TINY_FACE, tiny_subject

    from mega.train.face import load_face, train_face
    from mega.train.hair import canonical_views, open_hair_split

    root = tmp_path_factory.mktemp("views")
    union, head = tiny_subject(root)
    train_face(union, head, root / "run", TINY_FACE, progress=False)
    face, frames = load_face(root / "run" / "face.pt", head)
    onef = open_hair_split(union, "onef")
    timestep = int(onef.frames.timestep[0])
    return face, frames, timestep, canonical_views(face, frames, onef, torch.device("cpu"))


def test_the_canonical_views_hold_every_image_with_its_hair_and_mesh(subject_views):
    _, _, _, views = subject_views
    V, H, W = views.hair.shape
    assert V == 15 and views.images.shape == (V, 3, H, W)
    assert 0.01 < float(views.hair.float().mean()) < 0.5  # the subject has hair, not everywhere
    on_mesh = torch.isfinite(views.mesh_depth)
    assert 0.05 < float(on_mesh.float().mean()) < 0.9
    assert float(views.mesh_depth[on_mesh].min()) > 0.5  # the cameras are about a metre away


def test_initial_hair_takes_its_colours_from_the_views(subject_views):
    from mega.render.sh import SH_C0
    from mega.train.hair import initial_hair

    face, frames, timestep, views = subject_views
    base = HairConfig(init_on_scalp=200, init_off_scalp=400)
    hair_pixels = views.images.permute(1, 0, 2, 3)[:, views.hair]
    hair_colour = hair_pixels.mean(1)

    def colours(config):
        hair = initial_hair(face, frames, timestep, config, views)
        return (hair.params["sh0"][:, 0] * SH_C0 + 0.5).detach(), hair

    random_colours, _ = colours(base)
    from_views, hair = colours(base.replace(init_colour="views"))
    assert torch.equal(hair.params["means"], initial_hair(face, frames, timestep, base).params["means"])
    # Random colours are ~0.25 from the hair's on average per channel; colours from the views are close.
    assert float((random_colours - hair_colour).abs().mean()) > 0.15
    assert float((from_views - hair_colour).abs().mean()) < 0.08


def test_initial_hair_fills_the_visual_hull_of_the_hair(subject_views):
    from mega.train.hair import initial_hair

    face, frames, timestep, views = subject_views
    config = HairConfig(init_on_scalp=100, init_off_scalp=100, init_in_hull=500, init_colour="views")
    hair = initial_hair(face, frames, timestep, config, views)
    # The 500 hull points less those not joined to the scalp (a few, on 28 × 40 pixel masks).
    assert 690 <= hair.n <= 700
    hull = hair.params["means"][200:].detach()
    _, on_hair, agrees = views.classify(hull)
    assert bool(agrees.all()) and bool(on_hair.any(0).all())
    scalp = hair.params["means"][:200].detach()
    assert bool(connected_to_scalp(scalp, hull).all())
    assert initial_hair(face, frames, timestep, config.replace(init_hull_connected=False), views).n == 700
    # The hull reaches further from the scalp than the authors' 2 cm shell.
    assert float(torch.cdist(hull, scalp).min(1).values.max()) > 0.03
    with pytest.raises(ValueError, match="canonical views"):
        initial_hair(face, frames, timestep, config)


# ----------------------------------------------------------------------------- the joint stage's face on hair pixels
def test_without_face_on_hair_the_face_learns_nothing_from_hair_pixels():
    from mega.blend import blend
    from mega.train.joint import blended_for_loss

    g = torch.Generator().manual_seed(0)
    face = torch.rand(2, 3, 6, 5, generator=g).requires_grad_()
    hair_rgb = torch.rand(2, 3, 6, 5, generator=g)
    alpha = torch.rand(2, 1, 6, 5, generator=g)
    soft = torch.rand(2, 1, 6, 5, generator=g)
    hair_mask = torch.zeros(2, 1, 6, 5, dtype=torch.bool)
    hair_mask[:, :, :3] = True
    target = torch.rand(2, 3, 6, 5, generator=g)
    for face_on_hair, compositing in ((True, "authors"), (False, "authors"), (True, "over"), (False, "over")):
        rgb, weight = blend(face, hair_rgb, alpha, soft, compositing)
        out = {"rgb": rgb, "hair_weight": weight, "soft_occlusion": soft, "face": {"rgb": face},
               "hair": {"rgb": hair_rgb, "alpha": alpha}}
        face.grad = None
        image = blended_for_loss(out, hair_mask, face_on_hair, compositing)
        torch.testing.assert_close(image, rgb)  # the same image either way
        ((image - target) ** 2).sum().backward(retain_graph=True)
        on_hair = face.grad[hair_mask.expand(-1, 3, -1, -1)]
        elsewhere = face.grad[~hair_mask.expand(-1, 3, -1, -1)]
        assert float(elsewhere.abs().min()) > 0
        assert (float(on_hair.abs().min()) > 0) if face_on_hair else bool((on_hair == 0).all())
