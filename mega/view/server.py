"""``mega view``: a browser viewer of a trained avatar, rendered on the server (viser streams
each frame to the page as the background of its 3D view).

Controls: free orbit, the subject's cameras as presets, the first FLAME expression components,
jaw, neck and eyes, the tracked frame to start from (and to play through at a frame rate), the
layer (blend, face, hair, hair alpha, occlusion mask, depth, normals), the blending live (which
near-z, early stop, soft blending), the hair of other trained avatars when they are given (a
choice between the avatar's own hair and theirs), a button that saves the current view as a PNG,
and the frame time. While the camera moves a frame is rendered at half resolution; once it rests, at
the full one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mega.atomic import atomic_path
from mega.errors import DataError
from mega.view.scene import EXPRESSION_SLIDERS, LAYERS, AvatarScene, ViewSettings, look_at_camera

log = logging.getLogger(__name__)

OWN_HAIR = "own hair"
"""The hair choice of the avatar's own hair (the others are named by their run folders)."""

MOVING_S = 0.3  # a camera updated this recently is moving: half-resolution frames


def check_port_free(host: str, port: int) -> None:
    """A clear error for a port in use (viser would otherwise move to the next one quietly) or
    out of range."""
    if not 1 <= port <= 65535:
        raise DataError(f"--port {port}: a TCP port is 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DataError(f"port {port} on {host} is in use ({exc.strerror}); pass --port with a free one") from None


def wxyz_to_rotation(wxyz: np.ndarray) -> np.ndarray:
    """A unit quaternion (w, x, y, z) → rotation matrix [3, 3]."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = wxyz
    return Rotation.from_quat([x, y, z, w]).as_matrix()


class AvatarViewer:
    """The viser server of one :class:`AvatarScene`; ``stop()`` ends it. ``hair_scenes``: the
    same face wearing other avatars' hair (:meth:`AvatarScene.from_swap`), by name; the page
    then offers them beside the own hair and starts with the first of them."""

    def __init__(self, scene: AvatarScene, host: str = "127.0.0.1", port: int = 8080, save_dir: str | Path = ".",
                 fps: float = 10.0, hair_scenes: dict[str, AvatarScene] | None = None):
        import viser

        check_port_free(host, port)
        self.scenes = {OWN_HAIR: scene, **(hair_scenes or {})}
        self._first_hair = next(iter(hair_scenes)) if hair_scenes else OWN_HAIR
        self.scene, self.save_dir, self.fps = self.scenes[self._first_hair], Path(save_dir), fps
        self.settings = ViewSettings(timestep_index=self.scene.timesteps[0],
                                     evaluation_near_z=self.scene.default_near_z)
        self.server = viser.ViserServer(host=host, port=port, label="mega", verbose=False)
        self.port = self.server.get_port()
        self._lock = threading.Lock()
        self._dirty: dict[int, float] = {}  # client id → time of its last camera update
        self._full_done: set[int] = set()
        self._last: dict[int, tuple[np.ndarray, object]] = {}  # client id → (image, camera) last rendered in full
        self._stop = threading.Event()
        self._build_gui()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(lambda client: self._forget(client.client_id))
        self._worker = threading.Thread(target=self._render_loop, name="mega-view-render", daemon=True)
        self._worker.start()
        self._player = threading.Thread(target=self._play_loop, name="mega-view-play", daemon=True)
        self._player.start()

    # ----------------------------------------------------------------- GUI
    def _build_gui(self) -> None:
        gui, scene = self.server.gui, self.scene
        presets = [f"camera {i}" for i in scene.camera_indices]
        self.preset = gui.add_dropdown("camera", presets, initial_value=presets[self._first_camera()])
        self.preset.on_update(lambda _: self._apply_preset())
        self.layer = gui.add_dropdown("layer", LAYERS, initial_value="blended")
        self.hair = None
        if len(self.scenes) > 1:
            self.hair = gui.add_dropdown("hair", tuple(self.scenes), initial_value=self._first_hair)
            self.hair.on_update(lambda _: self._hair_changed())
        with gui.add_folder("frame"):
            self.timestep = gui.add_slider("tracked frame", scene.timesteps[0], scene.timesteps[-1], 1,
                                           scene.timesteps[0])
            self.play = gui.add_checkbox("play", False)
            self.reset = gui.add_button("reset to the tracked frame")
        with gui.add_folder("expression and pose"):
            self.expression = [gui.add_slider(f"expression {k}", -3.0, 3.0, 0.05, 0.0)
                               for k in range(EXPRESSION_SLIDERS)]
            self.jaw = gui.add_slider("jaw open (rad)", 0.0, 0.6, 0.01, 0.0)
            self.neck_yaw = gui.add_slider("neck yaw (rad)", -0.8, 0.8, 0.01, 0.0)
            self.neck_pitch = gui.add_slider("neck pitch (rad)", -0.5, 0.5, 0.01, 0.0)
            self.eyes_yaw = gui.add_slider("eyes yaw (rad)", -0.5, 0.5, 0.01, 0.0)
            self.eyes_pitch = gui.add_slider("eyes pitch (rad)", -0.4, 0.4, 0.01, 0.0)
        with gui.add_folder("blending"):
            self.near_z = gui.add_dropdown("occlusion near-z", ("1st", "2nd"),
                                           initial_value=("1st", "2nd")[scene.default_near_z])
            self.early_stop = gui.add_checkbox("early stop", True)
            self.soft = gui.add_checkbox("soft blending", True)
        self.save = gui.add_button("save PNG")
        self.status = gui.add_markdown("")
        controls = [self.layer, self.timestep, *self.expression, self.jaw, self.neck_yaw, self.neck_pitch,
                    self.eyes_yaw, self.eyes_pitch, self.near_z, self.early_stop, self.soft]
        for control in controls:
            control.on_update(lambda _: self._settings_changed())
        self.reset.on_click(lambda _: self._reset())
        self.save.on_click(lambda _: self._save())

    def _settings_changed(self) -> None:
        self.settings = ViewSettings(
            timestep_index=self._nearest_timestep(int(self.timestep.value)),
            expression=tuple(float(s.value) for s in self.expression), jaw_open_rad=float(self.jaw.value),
            neck_yaw_rad=float(self.neck_yaw.value), neck_pitch_rad=float(self.neck_pitch.value),
            eyes_yaw_rad=float(self.eyes_yaw.value), eyes_pitch_rad=float(self.eyes_pitch.value),
            layer=str(self.layer.value), evaluation_near_z=0 if self.near_z.value == "1st" else 1,
            early_stop=bool(self.early_stop.value), soft_blending=bool(self.soft.value))
        with self._lock:
            for client_id in self.server.get_clients():
                self._dirty[client_id] = 0.0  # not a camera move: straight to full resolution
                self._full_done.discard(client_id)

    def _hair_changed(self) -> None:
        """Another hair on the same face (same frames and cameras); the occlusion test switches to
        the near-z that hair is evaluated with (the 1st for another avatar's, as swaps are)."""
        self.scene = self.scenes[str(self.hair.value)]
        self.near_z.value = ("1st", "2nd")[self.scene.default_near_z]
        self._settings_changed()

    def _nearest_timestep(self, value: int) -> int:
        return min(self.scene.timesteps, key=lambda t: abs(t - value))

    def _reset(self) -> None:
        for slider in (*self.expression, self.jaw, self.neck_yaw, self.neck_pitch, self.eyes_yaw, self.eyes_pitch):
            slider.value = 0.0
        self._settings_changed()

    # ----------------------------------------------------------------- clients and cameras
    def _first_camera(self) -> int:
        """The position of the frontal camera (8 in the NeRSemble rig) among the presets, else 0."""
        return self.scene.camera_indices.index(8) if 8 in self.scene.camera_indices else 0

    def _connect(self, client) -> None:
        self._set_camera(client, self.scene.cameras[self._first_camera()])
        client.camera.on_update(lambda camera: self._camera_moved(camera.client.client_id))
        self._camera_moved(client.client_id, at=0.0)

    def _forget(self, client_id: int) -> None:
        with self._lock:
            self._dirty.pop(client_id, None)
            self._full_done.discard(client_id)
            self._last.pop(client_id, None)

    def _camera_moved(self, client_id: int, at: float | None = None) -> None:
        with self._lock:
            self._dirty[client_id] = time.monotonic() if at is None else at
            self._full_done.discard(client_id)

    def _apply_preset(self) -> None:
        camera = self.scene.cameras[self.scene.camera_indices.index(int(str(self.preset.value).split()[-1]))]
        for client in self.server.get_clients().values():
            self._set_camera(client, camera)

    def _set_camera(self, client, camera) -> None:
        c2w = camera.camera_to_world.detach().cpu().double().numpy()
        rotation, position = c2w[:3, :3], c2w[:3, 3]
        distance = float(np.linalg.norm(position))  # the subject sits near the world origin
        with client.atomic():
            client.camera.fov = float(camera.fov_y_rad)
            client.camera.position = position
            client.camera.look_at = position + rotation[:, 2] * distance
            client.camera.up_direction = -rotation[:, 1]

    def view_camera(self, client, full: bool):
        """The render camera of a client's view: its pose and vertical field of view, the
        subject's image height (half while moving) and the browser's aspect ratio."""
        reference = self.scene.cameras[0]
        height = int(reference.height) if full else int(reference.height) // 2
        if client.camera.image_height:
            aspect = client.camera.image_width / client.camera.image_height
        else:  # the page has not reported its size yet
            aspect = reference.width / reference.height
        width = max(int(round(height * aspect)), 8)
        return look_at_camera(np.asarray(client.camera.position), wxyz_to_rotation(np.asarray(client.camera.wxyz)),
                              float(client.camera.fov), width, max(height, 8))

    # ----------------------------------------------------------------- rendering
    def _render_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pending = {k: v for k, v in self._dirty.items() if k not in self._full_done}
            if not pending:
                time.sleep(0.01)
                continue
            clients = self.server.get_clients()
            for client_id, moved_at in pending.items():
                client = clients.get(client_id)
                if client is None:
                    continue
                full = time.monotonic() - moved_at >= MOVING_S
                try:
                    camera = self.view_camera(client, full)
                    image, ms = self.scene.render(camera, self.settings)
                except Exception as exc:  # noqa: BLE001 - a failed frame is reported in the page, the server lives
                    log.exception("rendering a frame failed")
                    self.status.content = f"**render failed**: {type(exc).__name__}: {exc}"
                    with self._lock:
                        self._full_done.add(client_id)
                    continue
                client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
                self.status.content = (f"frame {ms:.0f} ms ({1000 / max(ms, 1e-3):.1f} frames/s), "
                                       f"{camera.width} × {camera.height}{'' if full else ', moving'}")
                with self._lock:
                    if full and self._dirty.get(client_id) == moved_at:
                        self._full_done.add(client_id)
                        self._last[client_id] = (image, camera)

    def _play_loop(self) -> None:
        while not self._stop.is_set():
            time.sleep(1.0 / max(self.fps, 0.1))
            if bool(self.play.value):
                timesteps = self.scene.timesteps
                current = self._nearest_timestep(int(self.timestep.value))
                self.timestep.value = timesteps[(timesteps.index(current) + 1) % len(timesteps)]
                self._settings_changed()

    def _save(self) -> None:
        with self._lock:
            last = dict(self._last)
        if not last:
            self.status.content = "nothing rendered yet to save"
            return
        image, _ = last[max(last)]
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"view_{time.strftime('%Y%m%d-%H%M%S')}_{self.settings.layer.replace(' ', '_')}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        self.status.content = f"saved {path}"
        log.info("saved %s", path)

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()


def serve(scene: AvatarScene, host: str, port: int, save_dir: str | Path, fps: float,
          hair_scenes: dict[str, AvatarScene] | None = None) -> None:
    """Run the viewer until interrupted (Ctrl-C)."""
    run_until_interrupted(AvatarViewer(scene, host, port, save_dir, fps, hair_scenes), "mega view", host)


def run_until_interrupted(viewer, command: str, host: str) -> None:
    """Say where the page is, then keep ``viewer`` (anything with ``port`` and ``stop()``)
    serving until Ctrl-C or SIGTERM ends the process."""
    print(f"{command}: open http://{host}:{viewer.port} in a browser (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
