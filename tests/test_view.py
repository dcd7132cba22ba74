"""The interactive viewer: its renders of a trained avatar (every layer, the sliders, the
blending settings) and the `mega view` server (the page served, a port in use refused)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from mega.cli import main
from mega.errors import DataError
from mega.hair.ply import read_gaussian_ply
from mega.train.face import train_face
from mega.train.hair import train_hair
from mega.train.joint import train_joint
from mega.view.scene import LAYERS, AvatarScene, ViewSettings, look_at_camera
from browser import Browser, chromium_path, free_port
from test_hair import TINY_FACE, TINY_HAIR, tiny_subject


@pytest.fixture(scope="module")
def trained_avatar(tmp_path_factory):
    """(UNION folder, head model folder, run folder, hair_rigid.npz) of a 28 × 40 subject trained
    two steps a stage."""
    root = tmp_path_factory.mktemp("view")
    union, head = tiny_subject(root)
    run, rigid = root / "run", root / "hair_rigid.npz"
    train_face(union, head, run, TINY_FACE, progress=False)
    assert main(["hair-rigid", str(union), "--head-model", str(root / "head_model"), "--out", str(rigid)]) == 0
    train_hair(union, run / "face.pt", rigid, run, head, TINY_HAIR, progress=False)
    train_joint(union, run / "face.pt", run / "hair.pt", rigid, run, head, TINY_HAIR, progress=False)
    return union, root / "head_model", run, rigid


@pytest.fixture(scope="module")
def scene(trained_avatar):
    from mega.flame.head_model import load_head_model_folder

    union, head_dir, run, rigid = trained_avatar
    return AvatarScene.from_run(run, load_head_model_folder(head_dir), union, rigid, torch.device("cpu"))


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that differ between two images."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(-1) > 2).mean())


def test_every_layer_renders_the_head_from_every_preset(scene):
    assert scene.camera_indices == list(range(16)) and scene.timesteps  # the val split's frontal camera too
    settings = ViewSettings(timestep_index=scene.timesteps[0])
    for camera in scene.cameras[::5]:
        image, ms = scene.render(camera, settings)
        assert image.shape == (camera.height, camera.width, 3) and image.dtype == np.uint8 and ms > 0
        assert (image < 250).any(-1).mean() > 0.1  # the head covers part of the frame
        assert (image > 250).all(-1).mean() > 0.1  # on the white background
    frontal = scene.cameras[8]
    layers = {layer: scene.render(frontal, settings.replace(layer=layer))[0] for layer in LAYERS}
    for layer, image in layers.items():
        assert image.shape == (frontal.height, frontal.width, 3), layer
    assert differs(layers["face"], layers["hair"]) > 0.05
    assert differs(layers["depth"], layers["normals"]) > 0.05
    with pytest.raises(ValueError, match="layer must be one of"):
        scene.render(frontal, settings.replace(layer="wireframe"))
    with pytest.raises(DataError, match="not a tracked frame"):
        scene.render(frontal, settings.replace(timestep_index=10_000))


def test_the_sliders_and_blending_settings_change_the_view(scene):
    frontal = scene.cameras[8]
    base_settings = ViewSettings(timestep_index=scene.timesteps[0])
    base, _ = scene.render(frontal, base_settings)
    again, _ = scene.render(frontal, base_settings)
    assert differs(base, again) == 0.0  # deterministic: a change below is the slider's
    for change in ({"jaw_open_rad": 0.5}, {"neck_yaw_rad": 0.6}, {"expression": (3.0,) + (0.0,) * 9}):
        moved, _ = scene.render(frontal, base_settings.replace(**change))
        assert differs(base, moved) > 0.002, change
    # The hard mask differs from the blurred one somewhere along the hair's edge.
    hard, _ = scene.render(frontal, base_settings.replace(soft_blending=False))
    assert differs(base, hard) > 0.0
    with pytest.raises(DataError):
        scene.flame(base_settings.replace(timestep_index=-1))


def test_a_free_camera_at_a_preset_pose_sees_what_the_preset_sees(scene):
    preset = scene.cameras[8]
    c2w = preset.camera_to_world.numpy()
    free = look_at_camera(c2w[:3, 3], c2w[:3, :3], float(preset.fov_y_rad), preset.width, preset.height)
    torch.testing.assert_close(free.world_to_camera, preset.world_to_camera, atol=1e-5, rtol=1e-5)
    settings = ViewSettings(timestep_index=scene.timesteps[0])
    # Same pose and focal length; only the principal point (centred here) may shift the image.
    assert abs(float(free.intrinsics[1, 1] - preset.intrinsics[1, 1])) < 1e-3 * float(preset.intrinsics[1, 1])
    image, _ = scene.render(free, settings)
    assert (image < 250).any(-1).mean() > 0.1


def test_the_view_command_serves_the_page_and_refuses_a_port_in_use(trained_avatar, tmp_path):
    union, head_dir, run, rigid = trained_avatar
    port = free_port()
    command = [sys.executable, "-m", "mega", "view", str(run), str(union), "--head-model", str(head_dir), "--rigid",
               str(rigid), "--port", str(port), "--device", "cpu", "--save-dir", str(tmp_path / "saved")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        page, deadline = None, time.monotonic() + 120
        while page is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    page = response.read().decode(errors="replace")
            except OSError:
                time.sleep(0.5)
        assert page is not None and "<html" in page.lower()
        refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert f"port {port} on 127.0.0.1 is in use" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def view_region(shot: np.ndarray) -> np.ndarray:
    """The part of a screenshot where the avatar shows: left of the control panel, below the
    software-WebGL notice."""
    height, width = shot.shape[:2]
    return shot[int(0.3 * height):, int(0.32 * width):int(0.62 * width)]


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


@contextlib.contextmanager
def served(*arguments: str):
    """`mega ARGUMENTS` started as a server in a process group of its own; yields its port once
    the page answers; stops the group at the end."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mega", *arguments, "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_page(server, port)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def need_chromium() -> None:
    if chromium_path() is None:
        reason = "chromium is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"the viewer's browser tests must run on CI, but {reason}")
        pytest.skip(reason)


def wait_for_page(server: subprocess.Popen, port: int) -> None:
    def page_up():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return True
        except OSError:
            assert server.poll() is None, server.stdout.read()
            return None

    wait_for(page_up, 120, "the page did not come up")


def settled_view(browser: Browser, timeout_s: float = 90) -> np.ndarray:
    """The view region once it shows something darker than the white background and has
    stopped changing (the first frames come at half resolution, or while the page loads)."""
    shots = []

    def settled():
        shots.append(view_region(browser.screenshot()))
        shown = (shots[-1].astype(int).sum(-1) < 600).mean()
        if shown > 0.03 and len(shots) >= 3 and all(np.array_equal(shots[-1], s) for s in shots[-3:-1]):
            return shots[-1]
        return None

    return wait_for(settled, timeout_s, "the view did not show, settled, in the page")


def changed_view(browser: Browser, before: np.ndarray, what: str, timeout_s: float = 60) -> float:
    def changed():
        region = view_region(browser.screenshot())
        share = (np.abs(region.astype(int) - before.astype(int)).max(-1) > 30).mean()
        return share if share > 0.01 else None

    return wait_for(changed, timeout_s, what)


def test_the_export_viewer_shows_the_files_and_toggles_them(trained_avatar, tmp_path):
    """`mega view-export` on `mega export`'s folder: the page draws the face mesh and the hair
    splats itself (no model on the server); unticking the face hides it."""
    from mega.view.exports import export_files, splats_of

    need_chromium()
    union, head_dir, run, rigid = trained_avatar
    out = tmp_path / "export"
    assert main(["export", str(run), "--head-model", str(head_dir), "--out", str(out)]) == 0
    meshes, plys = export_files(out)
    assert [p.name for p in meshes] == ["face.obj"] and [p.name for p in plys] == ["hair_canonical.ply"]
    splats = splats_of(plys[0])
    scales = torch.exp(read_gaussian_ply(plys[0])["log_scales"])
    eigenvalues = np.linalg.eigvalsh(splats["covariances"])
    np.testing.assert_allclose(eigenvalues, np.sort(scales.numpy() ** 2, axis=1), rtol=1e-3, atol=1e-12)
    assert splats["opacities"].shape == (len(scales), 1) and 0 <= splats["rgbs"].min() <= splats["rgbs"].max() <= 1
    with pytest.raises(DataError, match="no .obj or .ply"):
        export_files(tmp_path)
    with served("view-export", str(out)) as port, Browser() as browser:
        browser.open(f"http://127.0.0.1:{port}/")
        before = settled_view(browser)
        # The page's visible checkboxes are the files' toggles, face.obj first (viser's own are hidden).
        checkbox = browser.box("Array.from(document.querySelectorAll('input[type=checkbox]'))"
                               ".filter(e => e.getBoundingClientRect().width > 0)[0]")
        browser.click((checkbox[0] + checkbox[2] / 2, checkbox[1] + checkbox[3] / 2))
        changed_view(browser, before, "unticking face.obj did not change the view")


def test_the_page_shows_the_avatar_and_a_slider_turns_it(trained_avatar, tmp_path):
    """A real browser (headless Chromium) on the page `mega view` serves: the avatar shows, and
    dragging the neck slider with the mouse changes the image."""
    need_chromium()
    union, head_dir, run, rigid = trained_avatar
    with served("view", str(run), str(union), "--head-model", str(head_dir), "--rigid", str(rigid), "--device",
                "cpu") as port, Browser() as browser:
        browser.open(f"http://127.0.0.1:{port}/")
        before = settled_view(browser)
        sliders = browser.evaluate("document.querySelectorAll('[role=slider]').length")
        assert sliders == 16  # tracked frame, 10 expressions, jaw, neck yaw and pitch, eyes yaw and pitch
        # Drag the neck-yaw slider's thumb (the 13th slider) most of the way to its right end.
        thumb = browser.box("document.querySelectorAll('[role=slider]')[12]")
        track = browser.box("document.querySelectorAll('[role=slider]')[12].parentElement")
        y = thumb[1] + thumb[3] / 2
        browser.drag((thumb[0] + thumb[2] / 2, y), (track[0] + track[2] * 0.85, y))
        value = browser.evaluate("document.querySelectorAll('[role=slider]')[12].getAttribute('aria-valuenow')")
        assert value is not None and float(value) > 0.3, value
        changed_view(browser, before, "turning the neck slider did not change the image")


def test_the_hair_turns_with_the_head_when_the_neck_slider_turns_it(scene):
    """The neck offset turns the hair's rigid transform about the posed neck joint exactly as
    FLAME turns the vertices bound to the neck joint (up to its small pose correctives)."""
    settings = ViewSettings(timestep_index=scene.timesteps[0])
    turned = settings.replace(neck_yaw_rad=0.5, neck_pitch_rad=-0.2)
    flame_model = scene.avatar.face.mesh.flame
    keys = ("shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
    with torch.no_grad():
        before = flame_model(**{k: scene.flame(settings)[k] for k in keys})[0]
        after = flame_model(**{k: scene.flame(turned)[k] for k in keys})[0]
        rotation, translation = scene.rigid(torch.tensor([settings.timestep_index]))
        new_rotation, new_translation = scene.head_motion(turned, scene.flame(turned), rotation, translation)
    head = flame_model.lbs_weights[:, 1] > 0.99  # the vertices the neck joint alone moves
    assert int(head.sum()) > 100
    # The hair transform's change, applied to the head's vertices before, gives them after.
    change = new_rotation[0] @ rotation[0].T
    offset = new_translation[0] - translation[0] @ change.T
    moved = before[head] @ change.T + offset
    assert float((after[head] - before[head]).norm(dim=-1).max()) > 0.02  # the head did turn
    error = (moved - after[head]).norm(dim=-1)
    assert float(error.median()) < 1e-6 and float(error.max()) < 0.01  # the correctives: a few mm at most
    assert scene.head_motion(settings, scene.flame(settings), rotation, translation)[0] is rotation  # no offset


def test_the_viewer_wears_another_avatars_hair(trained_avatar, tmp_path):
    """--hair-run/--hair-union: A's face with B's trained hair, aligned as `mega swap-hair`
    aligns it, evaluated with the 1st near-z as swaps are; B's hair here is A's own hair moved
    to one side, so the view must change where the hair is."""
    from mega.flame.head_model import load_head_model_folder
    from mega.train.checkpoint import load_checkpoint, save_checkpoint

    union, head_dir, run, rigid = trained_avatar
    head = load_head_model_folder(head_dir)
    other = tmp_path / "other"
    other.mkdir()
    (other / "joint.pt").write_bytes((run / "joint.pt").read_bytes())
    hair = load_checkpoint(run / "hair.pt")
    hair["hair"]["params.means"] = hair["hair"]["params.means"] + torch.tensor([0.03, 0.0, 0.0])
    save_checkpoint(other / "hair.pt", hair)
    own = AvatarScene.from_run(run, head, union, rigid, torch.device("cpu"))
    swapped = AvatarScene.from_swap(run, union, rigid, other, union, head, torch.device("cpu"))
    assert own.default_near_z == 1 and swapped.default_near_z == 0
    frontal = own.cameras[own.camera_indices.index(8)]
    settings = ViewSettings(timestep_index=own.timesteps[0], layer="hair")
    assert differs(own.render(frontal, settings)[0], swapped.render(frontal, settings)[0]) > 0.01
    # The face is A's in both.
    face = settings.replace(layer="face")
    assert differs(own.render(frontal, face)[0], swapped.render(frontal, face)[0]) == 0.0
    assert main(["view", str(run), str(union), "--head-model", str(head_dir), "--rigid", str(rigid),
                 "--hair-run", str(other)]) == 2  # --hair-union missing
    # The page's 'hair' choice: it starts with the other avatar's hair and switches to the own
    # hair and back, the occlusion test following each hair's near-z.
    from mega.view.server import OWN_HAIR, AvatarViewer
    viewer = AvatarViewer(own, port=free_port(), save_dir=tmp_path, hair_scenes={"other": swapped})
    try:
        assert viewer.scene is swapped and viewer.hair.value == "other" and viewer.near_z.value == "1st"
        assert viewer.settings.evaluation_near_z == 0
        viewer.hair.value = OWN_HAIR
        viewer._hair_changed()  # what the page's dropdown calls
        assert viewer.scene is own and viewer.near_z.value == "2nd" and viewer.settings.evaluation_near_z == 1
        viewer.hair.value = "other"
        viewer._hair_changed()
        assert viewer.scene is swapped and viewer.settings.evaluation_near_z == 0
    finally:
        viewer.stop()
    alone = AvatarViewer(own, port=free_port(), save_dir=tmp_path)
    try:
        assert alone.hair is None and alone.scene is own  # no other avatar: no choice
    finally:
        alone.stop()
