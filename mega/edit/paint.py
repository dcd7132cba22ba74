"""Facial texture painting (paper §5, Fig. 3b): paint on one image, and the paint stays on the
face in every view and expression.

Given a painted image I_p of one training camera and timestep and its mask M_p (the painted
pixels), the mask is lifted into UV space through the rasterizer's UVs (M_p^uv: every texel
whose bilinear footprint a painted face pixel reads), and only the diffuse neural texture T_di
under M_p^uv (learning rate 0.01) and the pixel decoder (1e-4) are optimised, everything else
fixed, with

    L = mean_{M_p} (Î_p − I_p)²  +  λ_keep · ½ [ mean_{1−M_p} (Î_p − I_p)²  +  mean_{1−M_v} (Î_v − Î_v⁰)² ]
        + λ_texel · mean_{texels ∉ M_p^uv} |D(e(uv), T_v) − D⁰(e(uv), T_v)|²
        + λ_paint · mean_{texels under the paint} |D(e(uv), T_v) − c_p(uv)|²

over the painted view p and a batch of other training views v, where M_v is the painted UV region
seen from v and Î_v⁰ the avatar's own render of v before painting: the painted view carries the
paint, and everything outside it stays as it was. The last term holds the pixel decoder's output
D (against its copy D⁰ before painting) on the unpainted texels the mesh uses, decoded from the
full neural texture T_v of each view of the batch (its expression and view direction) at the
texel centres: the decoder is shared by every pixel, and a few rendered views a step anchor too
few of its inputs (fine-tuned alone it recoloured the whole skin in speckles). The fourth asks
the texels the painted pixels fall in to decode to the paint there (c_p, the mean painted colour
of each texel's pixels) under the other views' textures too: without it, the paint is learnt
under the painted view's view and expression offsets only, and how much of it another view
shows varied between trainings of one avatar from a clear mark to a pale one.

The authors optimise the same two parts at the same rates (``paint_opt.py``: 2000 epochs, L2
inside the painted region plus λ_s·L2 elsewhere); λ_keep = 1 here, as their λ_s is not
published. Departures: the other views' targets are the avatar's renders before painting, not
the photographs, so that fine-tuning the pixel decoder cannot go on fitting the photographs and
change the rest of the face; and the two texel terms, which the authors do not have.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import SubjectDataset, SubjectFrames, collate_samples, to_device
from mega.edit.paint_config import PaintConfig
from mega.errors import DataError
from mega.face.frames import FrameParameters
from mega.face.export import texel_centre_uvs
from mega.render.mesh import interpolate, rasterize, texture_at
from mega.train.checkpoint import state_identity
from mega.train.loop import LoopSettings, ParameterGroup, train

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs
@dataclass
class Painting:
    """A painted view: image [3, H, W] in [0, 1], mask [H, W] bool, of ``camera`` at ``timestep``."""

    image: Tensor
    mask: Tensor
    camera: int
    timestep: int


def read_painting(image_path: str | Path, mask_path: str | Path, camera: int, timestep: int,
                  size: tuple[int, int]) -> Painting:
    """The painted image (RGB) and its mask (any non-zero pixel is painted) from files; ``size`` =
    (width, height) of the camera they were painted on."""
    images = {}
    for name, path in (("image", image_path), ("mask", mask_path)):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: the painted {name} was not found")
        try:
            with Image.open(path) as im:
                if im.size != tuple(size):
                    raise DataError(f"{path}: the painted {name} is {im.size[0]} x {im.size[1]} pixels, but camera "
                                    f"{camera} renders {size[0]} x {size[1]}; paint on an image of that camera")
                images[name] = np.asarray(im.convert("RGB" if name == "image" else "L"))
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for a file that is not an image
            raise DataError(f"{path}: the painted {name} cannot be decoded ({e}); expected a PNG of "
                            f"{size[0]} x {size[1]} pixels") from e
    mask = torch.from_numpy(images["mask"] > 0)
    if not bool(mask.any()):
        raise DataError(f"{mask_path}: the mask marks no painted pixel (every pixel is 0)")
    image = torch.from_numpy(images["image"].copy()).permute(2, 0, 1).float() / 255
    return Painting(image, mask, camera, timestep)


def view_index(frames: SubjectFrames, camera: int, timestep: int) -> int:
    """The index of the image of ``camera`` at ``timestep`` in a split (a painting is of one)."""
    matches = np.flatnonzero((frames.camera_index == camera) & (frames.timestep == timestep))
    if len(matches) == 0:
        raise DataError(f"{frames.json_path}: no image of camera {camera} at timestep {timestep}; a painting "
                        f"must show a view of the {frames.split} split")
    return int(matches[0])


def painted_sample(dataset: SubjectDataset, painting: Painting) -> dict:
    """The training sample of the painting's camera and timestep, with the painted image in place
    of the photograph."""
    sample = dict(dataset[view_index(dataset.frames, painting.camera, painting.timestep)])
    sample["image"] = painting.image
    sample["paint_mask"] = painting.mask[None].float()
    return sample


# ----------------------------------------------------------------------------- UV space
def pixel_uvs(face: nn.Module, rast: Tensor) -> Tensor:
    """[B, H, W, 2] texture coordinates of every pixel (meaningless where rast[..., 3] = 0)."""
    return interpolate(face.mesh.uvs[None], rast, face.mesh.faces_uv, backend=face.config.backend)


def lift_mask_to_uv(uv: Tensor, tex_size: int) -> Tensor:
    """M_p^uv [T, T] float in {0, 1}: the texels a bilinear lookup at the painted pixels reads.

    uv [N, 2] of the painted, mesh-covered pixels (v along the rows); texel centres sit at
    (i + 0.5) / T (grid_sample, align_corners=False)."""
    mask = uv.new_zeros(tex_size * tex_size)
    if uv.numel() == 0:
        return mask.view(tex_size, tex_size)
    xy = uv * tex_size - 0.5
    base = torch.floor(xy).long()
    for dx in (0, 1):
        for dy in (0, 1):
            x = (base[:, 0] + dx).clamp(0, tex_size - 1)
            y = (base[:, 1] + dy).clamp(0, tex_size - 1)
            mask[y * tex_size + x] = 1.0
    return mask.view(tex_size, tex_size)


def texel_colours(uv: Tensor, rgb: Tensor, tex_size: int) -> tuple[Tensor, Tensor]:
    """The texels that pixels at ``uv`` [N, 2] fall in, and the mean of their colours ``rgb``
    [N, 3] in each: (flat texel indices [n], colours [n, 3])."""
    ij = (uv * tex_size).floor().long().clamp(0, tex_size - 1)
    flat = ij[:, 1] * tex_size + ij[:, 0]
    texels, owner = torch.unique(flat, return_inverse=True)
    total = rgb.new_zeros(texels.numel(), rgb.shape[1]).index_add_(0, owner, rgb)
    count = rgb.new_zeros(texels.numel()).index_add_(0, owner, torch.ones_like(rgb[:, 0]))
    return texels, total / count[:, None]


@torch.no_grad()
def used_texels(face: nn.Module) -> Tensor:
    """[T, T] bool: the texels a bilinear lookup on the mesh can read — the UV layout rasterized
    at the texture's resolution (texel centres inside a UV triangle), grown by one texel for the
    lookups at the triangles' edges."""
    size = face.diffuse_texture.shape[-1]
    uvs = face.mesh.uvs
    # Texture row k holds v = (k + 0.5) / T; the rasterizer's row is (y + 1) / 2 · H: y = 2v − 1.
    clip = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], dim=1)
    rast = rasterize(clip[None], face.mesh.faces_uv, (size, size), backend=face.config.backend)
    inside = (rast[0, ..., 3] > 0).float()
    return F.max_pool2d(inside[None, None], 3, stride=1, padding=1)[0, 0] > 0


def painted_region(uv_mask: Tensor, uv: Tensor, covered: Tensor) -> Tensor:
    """M_v [B, 1, H, W] float: pixels of a view whose texture lookup reads painted texels."""
    region = uv.new_zeros(covered.shape)
    pixel_uv = uv[covered]
    if pixel_uv.numel():
        values = texture_at(uv_mask[None, None], pixel_uv, torch.zeros(pixel_uv.shape[0], dtype=torch.long,
                                                                       device=uv.device))[:, 0]
        region = region.index_put((covered,), (values > 0).to(region.dtype))
    return region[:, None]


# ----------------------------------------------------------------------------- the stage
class PaintStage:
    """The loop's stage: the painted view every step, plus a batch of other training views."""

    name = "paint"
    loss_terms = ("paint", "keep", "texels", "painted_texels")
    extra_columns = ()

    def __init__(self, avatar: Avatar, frames: FrameParameters, rigid: RigidTable, painted: dict,
                 config: PaintConfig, device: torch.device):
        self.avatar, self.frames, self.rigid, self.config = avatar, frames, rigid, config
        self.before = copy.deepcopy(avatar).eval().requires_grad_(False)  # Î⁰: the renders to keep
        for module in (avatar.hair, avatar.deformation, frames):
            if module is not None:
                module.requires_grad_(False)
        self.painted = to_device(collate_samples([painted]), device)
        face = avatar.face
        with torch.no_grad():
            out = self._render(self.painted)
            rast = out["face"]["rast"]
            covered = rast[..., 3] > 0
            uv = pixel_uvs(face, rast)
            painted_face = covered & (self.painted["paint_mask"][:, 0] > 0.5)
            if not bool(painted_face.any()):
                raise DataError("the painted pixels miss the face mesh in this view: paint on the face")
            size = face.diffuse_texture.shape[-1]
            self.uv_mask = lift_mask_to_uv(uv[painted_face], size)
            centres = texel_centre_uvs(size, device, face.diffuse_texture.dtype)
            # The texels whose decoded colour must not change: used by the mesh, not painted.
            self.kept_texels = torch.nonzero((used_texels(face) & (self.uv_mask == 0)).reshape(-1))[:, 0]
            self.kept_codes = face.uv_encoding(centres[self.kept_texels])
            # The texels the painted pixels fall on, and the paint's colour there.
            paint_rgb = self.painted["image"].permute(0, 2, 3, 1)[painted_face]
            self.painted_texels, self.painted_rgb = texel_colours(uv[painted_face], paint_rgb, size)
            self.painted_codes = face.uv_encoding(centres[self.painted_texels])
        self.generator = torch.Generator()
        # Only the painted texels move: the diffuse texture's gradient is masked (Adam then leaves
        # the rest untouched: zero gradients keep its moments at zero).
        face.diffuse_texture.register_hook(lambda grad: grad * self.uv_mask)

    def _render(self, batch: dict, avatar: Avatar | None = None) -> dict:
        flame = self.frames(batch["timestep_index"])
        rotation, translation = self.rigid(batch["timestep_index"])
        return (avatar or self.avatar)(flame, batch["camera"], rotation, translation)

    def modules(self) -> dict[str, nn.Module]:
        return {"face": self.avatar.face}

    def parameter_groups(self) -> list[ParameterGroup]:
        face = self.avatar.face
        trained = {id(face.diffuse_texture)} | {id(p) for p in face.pixel_decoder.parameters()}
        return [ParameterGroup("diffuse_texture", [face.diffuse_texture], self.config.lr_texture),
                ParameterGroup("pixel_decoder", list(face.pixel_decoder.parameters()), self.config.lr_pixel_decoder),
                ParameterGroup("fixed", [p for p in face.parameters() if id(p) not in trained], 0.0, trainable=False)]

    def begin_step(self, step: int) -> None:
        # Batch-norm statistics of the fixed decoders stay as trained.
        self.avatar.face.eval()
        # The texel sample of a step depends on the step alone: a resumed run draws the same ones.
        self.generator.manual_seed(self.config.seed * 1_000_003 + step)

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        mask = self.painted["paint_mask"]
        error = (self._render(self.painted)["rgb"] - self.painted["image"]) ** 2
        paint = masked_mean(error, mask)
        keep_painted_view = masked_mean(error, 1 - mask)
        out = self._render(batch)
        with torch.no_grad():
            target = self._render(batch, self.before)["rgb"]
        rast = out["face"]["rast"]
        region = painted_region(self.uv_mask, pixel_uvs(self.avatar.face, rast), rast[..., 3] > 0)
        keep = 0.5 * (keep_painted_view + masked_mean((out["rgb"] - target) ** 2, 1 - region))
        texels = self._texel_keep(batch, out)
        painted_texels = self._painted_texels(out)
        loss = (paint + self.config.keep_weight * keep + self.config.texel_keep_weight * texels
                + self.config.painted_texel_weight * painted_texels)
        return loss, {"paint": paint, "keep": keep, "texels": texels, "painted_texels": painted_texels}, {}

    def _texel_inputs(self, out: dict, texels: Tensor, codes: Tensor) -> Tensor:
        """The pixel decoder's inputs [B, n, code + C] at ``texels`` [n] (UV codes [n, code]) under
        the full neural texture T = T_di + T_v + T_dy of each view of the batch; T_v + T_dy are the
        render's own (fixed here), T_di carries its gradient."""
        features = self.avatar.face.diffuse_texture.flatten(2)[:, :, texels].transpose(1, 2)  # [1, n, C]
        offsets = out["face"].get("texture_offsets")
        if offsets is not None:
            features = features + offsets.detach().flatten(2)[:, :, texels].transpose(1, 2)  # [B, n, C]
        features = features.expand(out["rgb"].shape[0], -1, -1)
        return torch.cat([codes.expand(features.shape[0], -1, -1), features], dim=2)

    def _painted_texels(self, out: dict) -> Tensor:
        """Mean squared distance to the paint of the painted texels' decoded colour under the full
        neural texture of each view of the batch (other views and expressions than the painted one)."""
        inputs = self._texel_inputs(out, self.painted_texels, self.painted_codes)
        return ((self.avatar.face.pixel_decoder(inputs) - self.painted_rgb) ** 2).mean()

    def _texel_keep(self, batch: dict, out: dict) -> Tensor:
        """Mean squared change of the decoded colour of a random sample of the kept texels, under
        the full neural texture of each view of the batch."""
        count = min(self.config.texel_keep_samples, self.kept_texels.numel())
        pick = torch.randperm(self.kept_texels.numel(), generator=self.generator)[:count].to(self.kept_texels.device)
        with torch.no_grad():
            inputs = self._texel_inputs(out, self.kept_texels[pick], self.kept_codes[pick])
            target = self.before.face.pixel_decoder(inputs)
        return ((self.avatar.face.pixel_decoder(inputs) - target) ** 2).mean()


def masked_mean(error: Tensor, weight: Tensor) -> Tensor:
    """Mean of error [B, C, H, W] over the pixels weight [B, 1, H, W] selects (0 when none)."""
    return (error * weight).sum() / (weight.sum() * error.shape[1]).clamp_min(1.0)


def paint_avatar(avatar: Avatar, frames: FrameParameters, rigid: RigidTable, union_dir: str | Path,
                 painting: Painting, work_dir: str | Path, config: PaintConfig, device: torch.device,
                 progress: bool = True) -> tuple[Tensor, Avatar]:
    """Optimise ``avatar``'s face in place for ``painting``; checkpoints and loss log in
    ``work_dir`` (resumable). Returns M_p^uv [T, T] and a copy of the avatar as it was before."""
    dataset = SubjectDataset(union_dir, "train", parsing="off", depth="off")
    sample = painted_sample(dataset, painting)
    camera = sample["camera"]
    if (camera.width, camera.height) != (painting.image.shape[2], painting.image.shape[1]):
        raise DataError(f"the painting is {painting.image.shape[2]} x {painting.image.shape[1]} pixels, camera "
                        f"{painting.camera} renders {camera.width} x {camera.height}")
    stage = PaintStage(avatar, frames, rigid, sample, config, device)
    settings = LoopSettings(steps=config.iterations, batch_size=config.batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every)
    fingerprint = {**config.to_dict(), "camera": painting.camera, "timestep": painting.timestep,
                   "paint_pixels": int(painting.mask.sum()),
                   # What is painted and on what: a repainted image or a retrained avatar starts over.
                   "painting": state_identity({"image": painting.image, "mask": painting.mask}),
                   "avatar": state_identity(avatar.state_dict())}
    train(stage, dataset, work_dir, settings, fingerprint, device, progress=progress, on_settings_change="restart",
          fingerprint_defaults=PaintConfig.defaults())
    return stage.uv_mask, stage.before


# ----------------------------------------------------------------------------- an example painting
def frontal_train_camera(union_dir: str | Path) -> int:
    """The training camera nearest the val camera (NeRSemble's frontal camera 8 is held out of
    training for novel views, so a painting is made on its nearest neighbour)."""
    train_split = SubjectDataset(union_dir, "train", parsing="off", depth="off")
    val_split = SubjectDataset(union_dir, "val", parsing="off", depth="off")
    if len(train_split) == 0 or len(val_split) == 0:
        raise DataError(f"{union_dir}: the train and val splits must both have images")
    reference = val_split.camera(0).center
    cameras, first = np.unique(train_split.frames.camera_index, return_index=True)
    distance = [float((train_split.camera(int(i)).center - reference).norm()) for i in first]
    return int(cameras[int(np.argmin(distance))])


@torch.no_grad()
def example_painting(avatar: Avatar, frames: FrameParameters, rigid: RigidTable, union_dir: str | Path,
                     camera: int | None = None, colour: tuple[float, float, float] = (0.15, 0.35, 0.95),
                     radius_frac: float = 0.12) -> Painting:
    """A coloured disc painted on the cheek of the avatar's own render of ``camera`` at the first
    training timestep: the default painting of the synthetic subjects. The disc sits a quarter of
    the face region's width from its centre towards the image's left, a tenth of its height below it
    (the subject's right cheek in a frontal view), clipped to the face. ``camera`` None: the
    training camera nearest the frontal one."""
    if camera is None:
        camera = frontal_train_camera(union_dir)
    dataset = SubjectDataset(union_dir, "train", parsing="off", depth="off")
    first_timestep = int(dataset.frames.timestep.min())
    device = avatar.face.diffuse_texture.device
    batch = to_device(collate_samples([dataset[view_index(dataset.frames, camera, first_timestep)]]), device)
    rotation, translation = rigid(batch["timestep_index"])
    out = avatar(frames(batch["timestep_index"]), batch["camera"], rotation, translation, evaluation=True)
    face = out["face"]["mask"][0, 0] & (out["hair_weight"][0, 0] < 0.5)
    # Where the face region of the head model lands in the image (not the whole mesh: the neck
    # would pull the mark down to the jaw).
    region = torch.as_tensor(avatar.face.mesh.head.regions_mask(["face"]), device=device)
    if not bool(region.any()):
        raise DataError("the head model has no 'face' region to place the example mark on")
    pixels, _ = batch["camera"].project(out["face"]["vertices"][:, region])
    pixels = pixels[0]
    width = float(pixels[:, 0].max() - pixels[:, 0].min())
    height = float(pixels[:, 1].max() - pixels[:, 1].min())
    centre_x = float(pixels[:, 0].mean()) - 0.25 * width
    centre_y = float(pixels[:, 1].mean()) + 0.1 * height
    radius = max(radius_frac * width, 1.5)
    # pixel (i, j) covers [j, j + 1) x [i, i + 1): its centre is (j + 0.5, i + 0.5)
    centre_x, centre_y = centre_x - 0.5, centre_y - 0.5
    yy, xx = torch.meshgrid(torch.arange(face.shape[0], device=device), torch.arange(face.shape[1], device=device),
                            indexing="ij")
    mask = ((yy - centre_y) ** 2 + (xx - centre_x) ** 2 <= radius ** 2) & face
    if not bool(mask.any()):
        raise DataError(f"the example mark misses the face from camera {camera}")
    image = out["rgb"][0].clone()
    image[:, mask] = torch.tensor(colour, device=device)[:, None]
    return Painting(image.cpu(), mask.cpu(), camera, first_timestep)


def write_painting(painting: Painting, folder: str | Path) -> dict[str, Path]:
    """painted.png, mask.png and view.json (camera, timestep) in ``folder``, atomically."""
    from mega.atomic import atomic_path, write_json
    from mega.report.videos import to_uint8

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"image": folder / "painted.png", "mask": folder / "mask.png", "view": folder / "view.json"}
    image = to_uint8(painting.image)
    for key, array in (("image", image), ("mask", painting.mask.numpy().astype(np.uint8) * 255)):
        with atomic_path(paths[key]) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
    write_json(paths["view"], {"camera": painting.camera, "timestep": painting.timestep})
    return paths

