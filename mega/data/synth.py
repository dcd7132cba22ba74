"""The synthetic subject: a procedural head with hair, filmed by a NeRSemble-like rig and written
in GaussianAvatars' exact layout with MeGA's extras (parsing labels, depth maps, a one-frame
split for the canonical-hair stage).

What it exercises:

* skin detail that changes with expression: forehead wrinkles that deepen with ``brow_raise``
  and crow's feet with ``smile``, drawn in the head's canonical space so they move with the skin,
  over a UV-space pore/freckle texture;
* a view-dependent highlight (Blinn-Phong under a light fixed in the world);
* geometry beyond the head model: personal bumps of a few millimetres (cheekbones, brow ridge,
  chin) and cheeks that bulge with ``smile``, along the surface normal, so the written FLAME
  parameters explain the shape only up to that detail (as a tracked FLAME fit does real heads);
* volumetric hair: strands of small elongated Gaussians rooted on the scalp, moving rigidly with
  the head (a Procrustes fit of the posed scalp) plus a small non-rigid sway;
* eyes, brows, lips, teeth, ears and neck, each with its CelebAMask-HQ parsing label.

Ground truth is rendered at ``supersample``× the output size and box-filtered down (so it is not
a copy of what a model renders at the output size), while depth and parsing come from an exact
render at the output size: depth is the camera z of the mesh at each pixel centre, in metres.
The hair's strands (0.8 mm thick, under half a pixel at 138 × 200) are drawn with 3DGS's
dilation (``hair_render="classic"``) or with it mass-preserving (``"antialiased"``, gsplat's
mode of that name): classic strands are drawn about a supersampled pixel wide at full opacity,
so the written hair depends on ``supersample`` as much as on the strands; antialiased hair at 2×
scores 31–37 dB PSNR against the same hair at 8× (docs/hair.md, "The ground truth's hair and its
supersampling").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from tqdm import tqdm

from mega.data.camera import Camera
from mega.data.parsing import LABEL
from mega.data.rig import (DEFAULT_SYNTHETIC_HEIGHT, DEFAULT_SYNTHETIC_WIDTH, FRONTAL_CAMERA, nersemble_like_rig,
                           rig_serials)
from mega.data.union_writer import UnionWriter
from mega.flame import enhance
from mega.flame.geometry import vertex_normals
from mega.flame.head_model import HeadModel
from mega.flame.model import FlameModel
from mega.flame.toy import EXPRESSIONS
from mega.render.gaussians import rasterize_gaussians
from mega.render.mesh import interpolate, rasterize, texture
from mega.render.projection import world_to_clip

# NeRSemble's ten sequences, in the order GaussianAvatars lists them.
SEQUENCES = ("EMO-1", "EMO-2", "EMO-3", "EMO-4", "EXP-2", "EXP-3", "EXP-4", "EXP-5", "EXP-8", "EXP-9")
HairStyle = Literal["short", "long", "none"]
HairRender = Literal["classic", "antialiased"]
WHITE = 1.0


@dataclass(frozen=True)
class SynthOptions:
    seed: int = 0
    """Everything random (identity, motion, hair, textures) follows from it."""
    width: int = DEFAULT_SYNTHETIC_WIDTH
    height: int = DEFAULT_SYNTHETIC_HEIGHT
    n_cameras: int = 16
    n_sequences: int = 10
    """The last sequence is the test sequence."""
    frames_per_sequence: int = 3
    hair: HairStyle = "short"
    supersample: int = 2
    """Ground truth is rendered at this factor and box-filtered down."""
    hair_render: HairRender = "classic"
    """How the strands' sub-pixel Gaussians are drawn (the module docstring)."""
    hair_clumps: int = 0
    """0: independent strands; more: the strands grow in that many clumps (``build_hair``)."""
    hair_strands: int = 2500
    """Strands on the scalp (``build_hair``)."""
    hair_sway_mm: float = 4.0
    """How far the hair's tips sway side to side with time (half as far front to back), in mm
    (:func:`hair_sway_m`); 0: the hair moves rigidly with the head."""
    subject: str = "synthetic"


# ----------------------------------------------------------------------------- motion
def sequence_parameters(options: SynthOptions, head: HeadModel) -> dict[str, list[dict[str, np.ndarray]]]:
    """FLAME parameters per sequence and frame. Each sequence has a theme (which expression it
    plays, how the head turns); frames sample it at evenly spaced times, never all neutral."""
    rng = np.random.default_rng(options.seed)
    shape = np.zeros(300)
    shape[: min(20, head.n_shape)] = rng.normal(size=min(20, head.n_shape)) * 0.8
    themes = list(EXPRESSIONS) + ["talk", "turn"]
    out = {}
    for k, sequence in enumerate(SEQUENCES[: options.n_sequences]):
        theme = themes[k % len(themes)]
        yaw_amplitude = rng.uniform(0.1, 0.3) * (2.0 if theme == "turn" else 1.0)
        pitch_amplitude = rng.uniform(0.03, 0.12)
        phase = rng.uniform(0, 2 * np.pi)
        frames = []
        n = options.frames_per_sequence
        for t in range(n):
            s = (t + 0.5) / n  # in (0, 1)
            strength = np.sin(np.pi * s)  # 0 at both ends, 1 in the middle
            expr = np.zeros(100)
            expr[4:20] = rng.normal(size=16) * 0.15  # small unnamed components
            jaw = np.zeros(3)
            if theme in EXPRESSIONS:
                expr[EXPRESSIONS[theme]] = 1.6 * strength if theme != "jaw_open" else 0.5 * strength
                if theme == "jaw_open":
                    jaw[0] = 0.25 * strength
            elif theme == "talk":
                jaw[0] = 0.12 * (1 + np.sin(2 * np.pi * 2 * s + phase)) / 2
                expr[EXPRESSIONS["smile"]] = 0.6 * strength
            rotation = np.array([pitch_amplitude * np.sin(2 * np.pi * s + phase),
                                 yaw_amplitude * np.sin(2 * np.pi * s + 0.5 * phase), 0.02 * np.sin(phase)])
            frames.append({
                "shape": shape, "expr": expr, "jaw_pose": jaw, "rotation": rotation,
                "neck_pose": np.array([0.05 * strength, 0.0, 0.0]), "eyes_pose": np.zeros(6),
                "translation": rng.normal(size=3) * 0.002,
            })
        out[sequence] = frames
    return out


def canonical_parameters(shape: np.ndarray) -> dict[str, np.ndarray]:
    """GaussianAvatars' canonical frame: zero pose and expression, jaw open by 0.3 rad."""
    return {"shape": shape, "jaw_pose": np.array([0.3, 0.0, 0.0])}


def posed_vertices(model: FlameModel, params: dict[str, np.ndarray]) -> torch.Tensor:
    tensors = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None] for k, v in params.items()}
    return model(**tensors)[0]


# ----------------------------------------------------------------------------- appearance
@dataclass
class Appearance:
    """Per-vertex albedo [V, 3], label [V] (CelebAMask-HQ), masks for wrinkles and shine [V],
    canonical positions [V, 3] and a UV detail texture [1, T, T, 1]."""

    albedo: torch.Tensor
    label: torch.Tensor
    forehead: torch.Tensor
    eye_corners: torch.Tensor
    shine: torch.Tensor
    canonical: torch.Tensor
    detail: torch.Tensor


def build_appearance(head: HeadModel, seed: int, hair_colour: np.ndarray) -> Appearance:
    rng = np.random.default_rng(seed + 1)
    v = head.v_template
    V = len(v)
    regions = {name: head.region_mask(name) if name in head.regions else np.zeros(V, bool)
               for name in ("face", "scalp", "neck", "nose", "lips", "teeth", "left_eyeball", "right_eyeball",
                            "left_ear", "right_ear", "forehead", "left_eye_region", "right_eye_region")}
    skin = np.array([0.78, 0.58, 0.47]) * rng.uniform(0.9, 1.1, 3)
    albedo = np.tile(skin, (V, 1))
    # Low-frequency blotches (cheeks a little redder).
    albedo *= 1 + 0.06 * np.sin(v[:, :1] * 40 + rng.uniform(0, 6)) * np.sin(v[:, 1:2] * 33 + rng.uniform(0, 6))
    cheeks = np.exp(-(((np.abs(v[:, 0]) - 0.045) / 0.02) ** 2 + ((v[:, 1] + 0.01) / 0.02) ** 2)) * (v[:, 2] > 0.03)
    albedo += cheeks[:, None] * np.array([0.08, -0.04, -0.04])
    label = np.full(V, LABEL["skin"])

    mouth_y = v[head.lip_ring_upper].mean(0)[1] if head.lip_ring_upper.size else 0.0
    lips = regions["lips"]
    albedo[lips] = [0.66, 0.33, 0.33]
    label[lips & (v[:, 1] >= mouth_y)] = LABEL["u_lip"]
    label[lips & (v[:, 1] < mouth_y)] = LABEL["l_lip"]
    label[regions["nose"]] = LABEL["nose"]
    label[regions["neck"]] = LABEL["neck"]
    label[regions["left_ear"]] = LABEL["l_ear"]
    label[regions["right_ear"]] = LABEL["r_ear"]
    albedo[regions["teeth"]] = [0.92, 0.9, 0.82]
    label[regions["teeth"]] = LABEL["mouth"]
    # The scalp under the hair is hair-coloured, so gaps between strands do not flash skin.
    if hair_colour is not None:
        albedo[regions["scalp"]] = hair_colour * 0.8
    for side, name in ((0, "left"), (1, "right")):
        eyeball = regions[f"{name}_eyeball"]
        if not eyeball.any():
            continue
        centre = v[eyeball].mean(0)
        albedo[eyeball] = [0.92, 0.92, 0.9]
        front = eyeball & (v[:, 2] > centre[2] + 0.0075)
        albedo[front] = [0.28, 0.2, 0.13]
        pupil = eyeball & (v[:, 2] > centre[2] + 0.0105)
        albedo[pupil] = [0.05, 0.05, 0.05]
        label[eyeball] = LABEL["l_eye" if side == 0 else "r_eye"]
        # A brow: a band above the eye on the face.
        brow = (regions["face"] & (np.abs(v[:, 0] - centre[0]) < 0.022) & (v[:, 1] > centre[1] + 0.016)
                & (v[:, 1] < centre[1] + 0.026 - 0.1 * np.abs(v[:, 0] - centre[0]) ** 1.5 * 30))
        albedo[brow] = [0.22, 0.16, 0.12]
        label[brow] = LABEL["l_brow" if side == 0 else "r_brow"]

    eye_corner = np.zeros(V)
    for name in ("left_eyeball", "right_eyeball"):
        if regions[name].any():
            centre = head.v_template[regions[name]].mean(0)
            lateral = centre + np.array([np.sign(centre[0]) * 0.022, 0, -0.008])
            eye_corner = np.maximum(eye_corner, np.exp(-np.sum(((v - lateral) / 0.008) ** 2, axis=1)))
    forehead = regions["forehead"] & ~regions["scalp"]
    shine = (regions["face"] | regions["nose"]) & ~lips
    texture_size = 256
    noise = torch.as_tensor(rng.normal(size=(1, 1, texture_size, texture_size)), dtype=torch.float32)
    freckles = F.avg_pool2d(noise, 3, 1, 1) * 3
    detail = (1 + 0.06 * freckles.clamp(-2, 2)).permute(0, 2, 3, 1).contiguous()
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Appearance(as_t(np.clip(albedo, 0, 1)), torch.as_tensor(label), as_t(forehead), as_t(eye_corner),
                      as_t(shine), as_t(v), detail)


@dataclass
class GeometricDetail:
    """Offsets along the posed vertex normal, metres: ``static [V] + smile · smile_bulge [V]``."""

    static: torch.Tensor
    smile_bulge: torch.Tensor

    def apply(self, vertices: torch.Tensor, faces: torch.Tensor, expr: np.ndarray) -> torch.Tensor:
        smile = float(np.clip(expr[EXPRESSIONS["smile"]], 0.0, 1.5))
        normals = torch.as_tensor(vertex_normals(vertices.numpy(), faces.numpy()), dtype=vertices.dtype)
        return vertices + normals * (self.static + smile * self.smile_bulge)[:, None]


def build_geometric_detail(head: HeadModel, seed: int, amplitude_m: float = 0.0045) -> GeometricDetail:
    """Smooth personal bumps on the face (none on eyeballs, teeth, scalp or neck), fading to zero
    1.5 cm inside the face region's border, so the surface stays continuous."""
    rng = np.random.default_rng(seed + 2)
    v = head.v_template
    face = head.region_mask("face") & ~head.regions_mask(("left_eyeball", "right_eyeball", "teeth"))
    if not face.any():
        zeros = torch.zeros(len(v))
        return GeometricDetail(zeros, zeros)
    distance_to_border, _ = cKDTree(v[~face]).query(v)
    fade = np.clip(distance_to_border / 0.015, 0.0, 1.0) * face
    centres = v[face][rng.choice(int(face.sum()), size=16, replace=False)]
    signs = rng.choice([-1.0, 1.0], size=16) * rng.uniform(0.5, 1.0, size=16)
    bumps = sum(s * np.exp(-np.sum((v - c) ** 2, axis=1) / (2 * 0.015 ** 2)) for s, c in zip(signs, centres))
    static = amplitude_m * bumps * fade
    # Cheeks swell when smiling: two bumps beside the nose, below the eyes.
    mouth = v[head.lip_ring_upper].mean(0) if head.lip_ring_upper.size else v[face].mean(0)
    cheek = sum(np.exp(-np.sum((v - (mouth + np.array([side * 0.03, 0.02, -0.005]))) ** 2, axis=1) / (2 * 0.014 ** 2))
                for side in (-1.0, 1.0))
    smile_bulge = 0.002 * cheek * fade
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return GeometricDetail(as_t(static), as_t(smile_bulge))


# ----------------------------------------------------------------------------- hair
@dataclass
class Hair:
    """Strand Gaussians in the canonical head frame. means [N, 3], quats [N, 4], scales [N, 3],
    opacities [N], colors [N, 3], sway [N] (0 at the root, 1 at the tip)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sway: torch.Tensor


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] → unit quaternions [N, 4] (w, x, y, z)."""
    m = R
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = np.stack([
        np.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                  m[:, 0, 2] + m[:, 2, 0]], 1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                  m[:, 1, 2] + m[:, 2, 1]], 1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                  1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1),
    ], 1)  # [N, 4 candidates, 4]
    best = np.argmax(np.stack([1 + trace, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                               1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1), 1)
    q = candidates[np.arange(len(m)), best]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1, 1)


def build_hair(head: HeadModel, style: HairStyle, seed: int, colour: np.ndarray, clumps: int = 0,
               n_strands: int = 2500) -> Hair | None:
    """The subject's strands as Gaussians (``Hair``), or None for ``style == "none"``.

    ``clumps == 0``: every strand independent, its own tint (0.75–1.3 × ``colour``) and its own
    random bends. ``clumps > 0``: strands grow in that many clumps (each strand joins the clump of
    the nearest of ``clumps`` guide roots), as real hair does: a clump's strands share its tint
    (within ±5 %) and most of its bends, and gather towards its guide strand along their length
    (60 % of the way at the tip), so the hair's texture is coherent over a clump instead of
    changing from strand to strand. The independent strands' random draws are the same either way.
    ``n_strands``: how many grow from the scalp (real heads have some 100,000; more strands cover
    more of the hair's volume, with less background between them).
    """
    if style == "none":
        return None
    rng = np.random.default_rng(seed + 2)
    length_m, n_segments = {"short": (0.03, 6), "long": (0.14, 16)}[style]
    v, faces = head.v_template, head.faces
    normals = vertex_normals(v, faces)
    scalp_faces = faces[head.scalp_triangles()]
    if len(scalp_faces) == 0:
        raise ValueError("the head model has no triangle with every corner in its 'scalp' region: "
                         "nowhere to root the hair (hairstyle 'none' makes a subject without)")
    area = np.linalg.norm(np.cross(v[scalp_faces[:, 1]] - v[scalp_faces[:, 0]], v[scalp_faces[:, 2]] - v[scalp_faces[:, 0]]), axis=1)
    pick = rng.choice(len(scalp_faces), n_strands, p=area / area.sum())
    bary = rng.dirichlet(np.ones(3), n_strands)
    roots = np.einsum("nk,nkd->nd", bary, v[scalp_faces[pick]])
    root_normals = np.einsum("nk,nkd->nd", bary, normals[scalp_faces[pick]])
    root_normals /= np.linalg.norm(root_normals, axis=1, keepdims=True)
    lengths = length_m * rng.uniform(0.7, 1.2, n_strands)
    segment = lengths / n_segments
    # Short hair is combed back and up; long hair is parted in the middle and falls under gravity
    # beside and behind the head, leaving the face open (a fringe over the eyes would hide them in
    # every view, and a face that never saw its eyes cannot wear another hairstyle).
    if style == "short":
        comb = np.array([0.0, 0.15, -1.0])
    else:
        side = np.where(roots[:, :1] >= 0, 1.0, -1.0)
        comb = np.concatenate([0.55 * side, np.full_like(side, -1.0), np.full_like(side, -0.45)], axis=1)
    stiffness = 5.0 if style == "short" else 4.0
    # Clumps draw from their own generator, so that the independent strands' draws stay as they were.
    clump_rng = np.random.default_rng(seed + 5)
    if clumps > 0:
        guides = clump_rng.choice(n_strands, min(clumps, n_strands), replace=False)
        clump_of = cKDTree(roots[guides]).query(roots)[1]  # [S] index into guides
    points = [roots + root_normals * 0.0015]
    directions = []
    for k in range(n_segments):
        s = (k + 0.5) / n_segments
        keep = np.exp(-stiffness * s) if style == "long" else 0.75 - 0.5 * s
        bend = rng.normal(size=(n_strands, 3))
        if clumps > 0:  # mostly the clump's bend: about the same spread per strand as without clumps
            bend = 0.97 * clump_rng.normal(size=(len(guides), 3))[clump_of] + 0.25 * bend
        d = root_normals * keep + comb * (1 - keep) + bend * 0.15
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        directions.append(d)
        points.append(points[-1] + d * segment[:, None])
    P = np.stack(points, 1)  # [S, K+1, 3]
    D = np.stack(directions, 1)  # [S, K, 3]
    segment_m = np.repeat(segment[:, None], n_segments, 1)  # [S, K]
    if clumps > 0:  # gather towards the guide strand, not at all at the root and 60 % at the tip
        gather = 0.6 * (np.arange(n_segments + 1) / n_segments)[None, :, None]
        P = (1 - gather) * P + gather * P[guides[clump_of]]
        D = np.diff(P, axis=1)
        segment_m = np.linalg.norm(D, axis=2)
        D /= segment_m[..., None]
    centres = 0.5 * (P[:, 1:] + P[:, :-1])
    # Each Gaussian's x axis runs along its segment.
    x = D.reshape(-1, 3)
    helper = np.where(np.abs(x[:, 1:2]) < 0.9, np.array([[0, 1.0, 0]]), np.array([[1.0, 0, 0]]))
    y = np.cross(x, helper)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    z = np.cross(x, y)
    quats = matrix_to_quaternion(np.stack([x, y, z], axis=2))
    n = len(x)
    scales = np.stack([segment_m.reshape(-1) * 0.55, np.full(n, 0.0004), np.full(n, 0.0004)], 1)
    tint = rng.uniform(0.75, 1.3, (n_strands, 1)) * colour
    if clumps > 0:
        tint = (clump_rng.uniform(0.75, 1.3, (len(guides), 1))[clump_of] * clump_rng.uniform(0.95, 1.05, (n_strands, 1))
                * colour)
    tip = np.linspace(0.0, 0.35, n_segments)[None, :, None]
    colors = np.clip(tint[:, None, :] * (1 + tip), 0, 1).reshape(-1, 3)
    sway = np.tile(((np.arange(n_segments) + 0.5) / n_segments) ** 2, n_strands)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Hair(as_t(centres.reshape(-1, 3)), as_t(quats), as_t(scales), torch.full((n,), 0.85),
                as_t(colors), as_t(sway))


def rigid_fit(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rotation and translation with R·source + t ≈ target (Kabsch)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    U, _, Vt = torch.linalg.svd((source - mu_s).T @ (target - mu_t))
    d = torch.sign(torch.linalg.det(Vt.T @ U.T))
    R = Vt.T @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ U.T
    return R, mu_t - R @ mu_s


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def hair_sway_m(timestep: int, seed: int, amplitude_mm: float) -> torch.Tensor:
    """[3] metres, in the head's frame: the sway of the hair's tips at a global ``timestep``
    (``Hair.sway`` scales it along each strand, 0 at the root). Side to side by up to
    ``amplitude_mm``, front to back by half of it, at frequencies of its own: a motion with time
    that the frame's expression does not predict."""
    amplitude_m = amplitude_mm / 1000
    return torch.tensor([amplitude_m * math.sin(0.9 * timestep + seed), 0.0,
                         0.5 * amplitude_m * math.cos(0.7 * timestep)])


def posed_hair(hair: Hair, R: torch.Tensor, t: torch.Tensor, sway_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and quaternions of the hair after the sway (in the head frame) and the head's motion."""
    means = hair.means + hair.sway[:, None] * sway_m
    q_R = torch.as_tensor(matrix_to_quaternion(R[None].double().numpy()), dtype=torch.float32)
    return means @ R.T + t, quaternion_multiply(q_R.expand(len(hair.quats), 4), hair.quats)


# ----------------------------------------------------------------------------- rendering
def vertex_attributes(vertices: torch.Tensor, faces: torch.Tensor, appearance: Appearance) -> torch.Tensor:
    """Everything shading interpolates, per posed vertex [V, 15]: position, normal, albedo,
    canonical position, forehead and eye-corner wrinkle masks, shine."""
    normals = torch.as_tensor(vertex_normals(vertices.numpy(), faces.numpy()), dtype=torch.float32)
    return torch.cat([vertices, normals, appearance.albedo, appearance.canonical, appearance.forehead[:, None],
                      appearance.eye_corners[:, None], appearance.shine[:, None]], 1)


def render_view(camera: Camera, vertices: torch.Tensor, attrs: torch.Tensor, faces: torch.Tensor,
                faces_uv: torch.Tensor, uvs: torch.Tensor, appearance: Appearance, expr: np.ndarray, hair_state,
                supersample: int, light_dir: torch.Tensor, hair_render: HairRender = "classic"):
    """One ground-truth view: image [H, W, 3] in [0, 1], foreground alpha [H, W], parsing [H, W]
    uint8, depth [H, W] metres (0 = background). ``attrs`` from :func:`vertex_attributes`."""
    H, W = camera.height, camera.width
    big = camera.resized(W * supersample, H * supersample)
    pos = world_to_clip(vertices, big)[None]
    rast = rasterize(pos, faces, (big.height, big.width))
    covered = rast[0, ..., 3] > 0
    g = interpolate(attrs[None], rast, faces)[0]
    point, normal, albedo, canonical = g[..., 0:3], F.normalize(g[..., 3:6], dim=-1), g[..., 6:9], g[..., 9:12]
    forehead, eye_corner, shine = g[..., 12], g[..., 13], g[..., 14]
    uv = interpolate(uvs[None], rast, faces_uv)
    detail = texture(appearance.detail, uv, boundary_mode="wrap")[0, ..., 0]
    # Wrinkles: stripes in the canonical frame, as deep as the expression is strong.
    brow = max(float(expr[EXPRESSIONS["brow_raise"]]), 0.0)
    smile = max(float(expr[EXPRESSIONS["smile"]]), 0.0)
    stripes = (0.5 + 0.5 * torch.sin(canonical[..., 1] * (2 * math.pi / 0.008))) ** 6
    fan = (0.5 + 0.5 * torch.sin((canonical[..., 1] + 0.3 * canonical[..., 2]) * (2 * math.pi / 0.005))) ** 6
    wrinkles = (1 - 0.3 * min(brow, 1.5) * forehead * stripes) * (1 - 0.35 * min(smile, 1.5) * eye_corner * fan)
    to_camera = F.normalize(big.center[None, None] - point, dim=-1)
    lambert = (normal * light_dir).sum(-1).clamp_min(0)
    half = F.normalize(light_dir + to_camera, dim=-1)
    specular = 0.35 * shine * (normal * half).sum(-1).clamp_min(0) ** 40
    shaded = albedo * detail[..., None] * wrinkles[..., None] * (0.35 + 0.75 * lambert[..., None]) + specular[..., None]
    mesh_rgb = torch.where(covered[..., None], shaded, torch.full_like(shaded, WHITE))

    hair_alpha_big = torch.zeros(big.height, big.width)
    rgb_big = mesh_rgb
    if hair_state is not None:
        means, quats, hair = hair_state
        mesh_depth = interpolate(big.world_to_camera_points(vertices)[None, :, 2:], rast, faces)[0, ..., 0]
        mesh_depth = torch.where(covered, mesh_depth, torch.full_like(mesh_depth, math.inf))
        with torch.no_grad():  # hair_render names the rasterizer's mode (classic or antialiased)
            out = rasterize_gaussians(means, quats, hair.scales, hair.opacities, big, colors=hair.colors,
                                      mesh_depth=mesh_depth, rasterize_mode=hair_render)
        hair_alpha_big = out["alpha"]
        rgb_big = out["color"] + (1 - hair_alpha_big[..., None]) * mesh_rgb
    fg_big = 1 - (1 - covered.float()) * (1 - hair_alpha_big)
    # Box filter down to the output size: supersampled anti-aliasing.
    down = lambda x: F.avg_pool2d(x.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)  # noqa: E731
    image = down(rgb_big).clamp(0, 1)
    fg = down(fg_big[..., None])[..., 0]
    hair_alpha = down(hair_alpha_big[..., None])[..., 0]

    # Exact depth and parsing at the output size.
    rast1 = rasterize(world_to_clip(vertices, camera)[None], faces, (H, W))
    on_mesh = rast1[0, ..., 3] > 0
    depth = interpolate(camera.world_to_camera_points(vertices)[None, :, 2:], rast1, faces)[0, ..., 0]
    depth = torch.where(on_mesh, depth, torch.zeros_like(depth))
    face_label = appearance.label[faces[:, 0]]
    parsing = torch.where(on_mesh, face_label[(rast1[0, ..., 3].long() - 1).clamp_min(0)], torch.zeros_like(depth).long())
    parsing = torch.where(hair_alpha > 0.5, torch.full_like(parsing, LABEL["hair"]), parsing)
    return image, fg, parsing.to(torch.uint8), depth


# ----------------------------------------------------------------------------- the subject
HAIR_COLOUR = np.array([0.2, 0.13, 0.08])
"""The hair's base RGB in [0, 1]; each strand (or clump) tints it (``build_hair``)."""
LIGHT_DIRECTION = (0.35, 0.55, 0.75)
"""The light's direction (world, towards the light; normalised where used)."""


@dataclass
class SynthScene:
    """Everything a subject's frames are drawn from (:func:`synthetic_scene`): the enhanced head,
    its appearance, detail and strands, and the FLAME parameters of every sequence and frame."""

    options: SynthOptions
    model: FlameModel
    appearance: Appearance
    hair: Hair | None
    detail: GeometricDetail
    faces: torch.Tensor  # [F, 3] int64
    faces_uv: torch.Tensor  # [F, 3] int64
    uvs: torch.Tensor  # [T, 2] float32
    scalp: torch.Tensor  # [V] bool
    params: dict[str, list[dict[str, np.ndarray]]]
    rest: torch.Tensor  # [V, 3] metres: the shape, neutral
    light_dir: torch.Tensor  # [3] unit

    def frame(self, frame: dict[str, np.ndarray], global_t: int):
        """(vertices [V, 3], their attributes for :func:`render_view`, the hair's state or None)
        of one frame, ``global_t`` its timestep over all sequences (the hair's sway)."""
        vertices = self.detail.apply(posed_vertices(self.model, frame), self.faces, frame["expr"])
        attrs = vertex_attributes(vertices, self.faces, self.appearance)
        hair_state = None
        if self.hair is not None:
            R, trans = rigid_fit(self.rest[self.scalp], vertices[self.scalp])
            means, quats = posed_hair(self.hair, R, trans, hair_sway_m(global_t, self.options.seed,
                                                                        self.options.hair_sway_mm))
            hair_state = (means, quats, self.hair)
        return vertices, attrs, hair_state

    def render(self, camera: Camera, frame: dict[str, np.ndarray], state):
        """:func:`render_view` of one frame's ``state`` (:meth:`frame`) from ``camera``."""
        vertices, attrs, hair_state = state
        return render_view(camera, vertices, attrs, self.faces, self.faces_uv, self.uvs, self.appearance,
                           frame["expr"], hair_state, self.options.supersample, self.light_dir,
                           self.options.hair_render)


def synthetic_scene(head: HeadModel, options: SynthOptions) -> SynthScene:
    """The subject ``options`` describes on ``head``, before any frame is drawn."""
    torch.manual_seed(options.seed)
    enhanced = enhance(head)
    model = FlameModel(enhanced)
    params = sequence_parameters(options, head)
    shape = params[next(iter(params))][0]["shape"]
    return SynthScene(
        options=options, model=model,
        appearance=build_appearance(enhanced, options.seed, HAIR_COLOUR if options.hair != "none" else None),
        hair=build_hair(enhanced, options.hair, options.seed, HAIR_COLOUR, options.hair_clumps,
                        options.hair_strands),
        detail=build_geometric_detail(enhanced, options.seed),
        faces=torch.as_tensor(enhanced.faces, dtype=torch.int64),
        faces_uv=torch.as_tensor(enhanced.faces_uv, dtype=torch.int64),
        uvs=torch.as_tensor(enhanced.uvs, dtype=torch.float32),
        scalp=torch.as_tensor(enhanced.region_mask("scalp")), params=params,
        rest=posed_vertices(model, {"shape": shape}), light_dir=F.normalize(torch.tensor(LIGHT_DIRECTION), dim=0))


def synthesize(parent: str | Path, head: HeadModel, options: SynthOptions = SynthOptions(),
               progress: bool = True) -> Path:
    """Write the subject under ``parent``; return its UNION folder."""
    scene = synthetic_scene(head, options)
    cameras = nersemble_like_rig(options.width, options.height, options.n_cameras)
    writer = UnionWriter(Path(parent), options.subject, cameras, rig_serials(options.n_cameras))
    sequences = list(scene.params)
    total = sum(len(frames) for frames in scene.params.values()) * len(cameras)
    bar = tqdm(total=total, desc="synth", unit="img", disable=not progress)
    global_t = 0
    with torch.no_grad():
        for sequence, frames in scene.params.items():
            for t, frame in enumerate(frames):
                writer.write_flame(sequence, t, frame)
                state = scene.frame(frame, global_t)
                for index, camera in enumerate(cameras):
                    image, fg, parsing, depth = scene.render(camera, frame, state)
                    writer.write_frame(sequence, t, index, _to_uint8(image), _to_uint8(fg), parsing.numpy(),
                                       depth.numpy())
                    bar.update()
                global_t += 1
    bar.close()
    shape = scene.params[sequences[0]][0]["shape"]
    return writer.finish(sequences, sequences[-1:], canonical_parameters(shape), onef_timestep=0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def options_summary(options: SynthOptions) -> dict:
    return {**asdict(options), "frontal_camera": FRONTAL_CAMERA}


def synthesized_union(folder: str | Path) -> Path:
    """The UNION folder that `mega synth` wrote into ``folder`` (named by its summary.json)."""
    summary = Path(folder) / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: not found; synthesize the subject first (`mega synth`, rule synthesize)")
    return Path(folder) / json.loads(summary.read_text())["union"]
