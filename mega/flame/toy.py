"""A procedural head model in FLAME's format, for users without the licensed FLAME files.

It is built by code, deterministically, and written as a FLAME pickle + masks pickle + template
OBJ that :func:`mega.flame.head_model.load_head_model` reads like the real thing:

* a head and neck surface (a warped ellipsoid joined smoothly to a neck cylinder, open at the
  neck like FLAME) with nose, brows, eye sockets, cheeks, lips, chin and ears, and a mouth slit
  whose two lips are the lip rings the teeth are built from;
* two eyeballs skinned to their own joints;
* FLAME's five joints (root, neck, jaw, eyes) with a joint regressor and smooth skinning weights;
* 300 smooth identity blendshapes and 100 expression blendshapes, the first four of which open
  the jaw, smile, raise the brows and close the eyes;
* pose correctives for the neck and jaw;
* UVs without overlap: the skin is unwrapped cylindrically with the seam at the back of the
  head (the face gets the most texture area), the eyeballs get discs, and FLAME's teeth
  rectangle is left free;
* FLAME's region masks (face, scalp, neck, eyeballs, ears, nose, lips, ...).

Units are metres; the face looks along +z, +y is up, +x is the subject's left.
"""

from __future__ import annotations

import numpy as np

from mega.flame.geometry import vertex_normals
from mega.flame.head_model import HeadModel

# Named expression components of the toy model (the first four of the 100).
EXPRESSIONS = {"jaw_open": 0, "smile": 1, "brow_raise": 2, "eyes_close": 3}

_N_COLUMNS = 64  # around the head; the front column is _N_COLUMNS // 2
_N_HEAD_ROWS = 44
_N_NECK_ROWS = 8
_AZIMUTH_WARP = 0.55  # > 0 puts more columns on the face than on the back
_LIP_RING = 15  # vertices per lip ring, as FLAME's

_CENTER = np.array([0.0, 0.02, -0.01])  # cranium ellipsoid centre
_RADII = np.array([0.076, 0.105, 0.095])  # x, y, z semi-axes
_NECK_RADII = (0.052, 0.056)  # x, z
_NECK_CENTER_Z = -0.025
_NECK_BOTTOM_Y = -0.17
_THETA_MAX = np.deg2rad(146.0)

_MOUTH_Y = -0.035
_EYE_AZIMUTH = 0.5  # radians either side of the front
_EYE_Y = 0.028
_EYE_RADIUS = 0.0115
_EYE_RINGS, _EYE_SEGMENTS = 10, 16  # rings every 15 degrees from the front pole to 150 degrees


def _smoothstep(x, lo, hi):
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(x, sigma):
    return np.exp(-0.5 * (np.asarray(x) / sigma) ** 2)


def _row_angles() -> np.ndarray:
    """Polar angles of the head rows (pole excluded), twice as dense over the face."""
    fine = np.linspace(0.0, _THETA_MAX, 2001)
    density = 1.0 + 1.0 * _smoothstep(fine, np.deg2rad(60), np.deg2rad(75))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(fine))])
    return np.interp(np.linspace(0.0, cdf[-1], _N_HEAD_ROWS + 1)[1:], cdf, fine)


class _Surface:
    """The head-and-neck grid: R rows × N columns plus a pole, before features are added."""

    def __init__(self):
        N = _N_COLUMNS
        s = -np.pi + 2 * np.pi * np.arange(N) / N  # uniform parameter, front at s = 0
        self.azimuth = s - _AZIMUTH_WARP * np.sin(s)  # denser columns at the front
        theta = _row_angles()
        head_y = _CENTER[1] + _RADII[1] * np.cos(theta)
        neck_y = np.linspace(head_y[-1], _NECK_BOTTOM_Y, _N_NECK_ROWS + 1)[1:]
        self.y_rows = np.concatenate([head_y, neck_y])  # [R]
        sin_t = np.concatenate([np.sin(theta), np.zeros(_N_NECK_ROWS)])
        # Blend from the ellipsoid into the neck where the ellipsoid becomes narrower than the
        # neck; the sigmoid keeps the jaw line smooth.
        mean_radius = 0.5 * (_RADII[0] + _RADII[2]) * sin_t
        below_equator = np.concatenate([np.cos(theta) < 0, np.ones(_N_NECK_ROWS, bool)])
        alpha = np.where(below_equator, 1 / (1 + np.exp(-(mean_radius - 0.058) / 0.004)), 1.0)
        phi = self.azimuth[None, :]
        ex, ez = _RADII[0] * sin_t[:, None] * np.sin(phi), _CENTER[2] + _RADII[2] * sin_t[:, None] * np.cos(phi)
        nx, nz = _NECK_RADII[0] * np.sin(phi), _NECK_CENTER_Z + _NECK_RADII[1] * np.cos(phi)
        a = alpha[:, None]
        x = a * ex + (1 - a) * nx
        z = a * ez + (1 - a) * nz
        y = np.broadcast_to(self.y_rows[:, None], x.shape)
        self.grid = np.stack([x, y, z], axis=-1)  # [R, N, 3]
        self.pole = np.array([0.0, _CENTER[1] + _RADII[1], _CENTER[2]])
        self.n_rows = self.grid.shape[0]

    def front_row_nearest(self, y: float) -> int:
        return int(np.argmin(np.abs(self.y_rows - y)))


def _uv_cup(center: np.ndarray, radius: float, uv_center, uv_radius):
    """An eyeball: a sphere cap from the front pole (+z) to 150°, with a disc UV island."""
    rings = np.deg2rad(15.0) * np.arange(1, _EYE_RINGS + 1)
    alpha = 2 * np.pi * np.arange(_EYE_SEGMENTS) / _EYE_SEGMENTS
    st, ct = np.sin(rings)[:, None], np.cos(rings)[:, None]
    ring_v = np.stack([st * np.cos(alpha), st * np.sin(alpha), np.broadcast_to(ct, (len(rings), len(alpha)))], -1)
    verts = np.concatenate([[[0.0, 0.0, 1.0]], ring_v.reshape(-1, 3)]) * radius + center
    rho = (rings / rings[-1])[:, None] * uv_radius
    ring_uv = np.stack([uv_center[0] + rho * np.cos(alpha), uv_center[1] + rho * np.sin(alpha)], -1)
    uvs = np.concatenate([[uv_center], ring_uv.reshape(-1, 2)])
    M = _EYE_SEGMENTS
    idx = 1 + np.arange(len(rings) * M).reshape(len(rings), M)
    nxt = np.roll(idx, -1, axis=1)
    fan = np.stack([np.zeros(M, np.int64), idx[0], nxt[0]], 1)
    quads_a = np.stack([idx[:-1], idx[1:], nxt[1:]], -1).reshape(-1, 3)
    quads_b = np.stack([idx[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3)
    faces = np.concatenate([fan, quads_a, quads_b])
    # Outward winding: the front fan's normal must point along +z.
    if vertex_normals(verts, faces)[0, 2] < 0:
        faces = faces[:, [0, 2, 1]]
    equator = idx[5]  # ring at 90 degrees: its mean is the eyeball centre
    return verts, uvs, faces, equator


def build_toy_head(seed: int = 0) -> HeadModel:
    """Build the procedural head model. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    surf = _Surface()
    R, N = surf.n_rows, _N_COLUMNS
    front = N // 2

    # ---- topology: pole + grid, quads split in two, mouth slit by duplicated lower-lip vertices
    grid_idx = 1 + np.arange(R * N).reshape(R, N)
    mouth_row = surf.front_row_nearest(_MOUTH_Y)
    mouth_y = surf.y_rows[mouth_row]  # the slit lies exactly on this row
    half = (_LIP_RING - 1) // 2
    lip_cols = np.arange(front - half, front + half + 1)
    inner_cols = lip_cols[1:-1]
    dup_idx = 1 + R * N + np.arange(len(inner_cols))
    n_head = 1 + R * N + len(dup_idx)

    nxt = np.roll(np.arange(N), -1)
    faces = [np.stack([np.zeros(N, np.int64), grid_idx[0], grid_idx[0, nxt]], 1)]
    top = grid_idx[:-1].copy()
    top[mouth_row, inner_cols] = dup_idx  # faces below the mouth row use the lower lip
    a, b = top, top[:, nxt]
    c, d = grid_idx[1:, nxt], grid_idx[1:]
    faces += [np.stack([a, d, c], -1).reshape(-1, 3), np.stack([a, c, b], -1).reshape(-1, 3)]
    head_faces = np.concatenate(faces)

    # ---- texture coordinates of the skin: cylindrical, seam at the back, v up, below 0.74
    v_of_row = 0.74 * (1 - np.arange(1, R + 1) / R)
    u_cols = np.arange(N + 1) / N
    uv_grid = np.stack(np.meshgrid(u_cols, v_of_row), -1).reshape(-1, 2)  # [R*(N+1), 2]
    uv_grid_idx = N + np.arange(R * (N + 1)).reshape(R, N + 1)  # pole uvs come first
    pole_uvs = np.stack([(np.arange(N) + 0.5) / N, np.full(N, 0.74)], 1)
    col_next_uv = np.arange(1, N + 1)  # the last column's right neighbour is the seam copy
    fuv = [np.stack([np.arange(N), uv_grid_idx[0, :N], uv_grid_idx[0, col_next_uv]], 1)]
    ua, ub = uv_grid_idx[:-1, :N], uv_grid_idx[:-1, col_next_uv]
    uc, ud = uv_grid_idx[1:, col_next_uv], uv_grid_idx[1:, :N]
    fuv += [np.stack([ua, ud, uc], -1).reshape(-1, 3), np.stack([ua, uc, ub], -1).reshape(-1, 3)]
    head_faces_uv = np.concatenate(fuv)
    head_uvs = np.concatenate([pole_uvs, uv_grid])

    # ---- base positions, then features displaced along the base normals
    verts = np.zeros((n_head, 3))
    verts[0] = surf.pole
    verts[grid_idx] = surf.grid
    verts[dup_idx] = surf.grid[mouth_row, inner_cols]
    azimuth = np.zeros(n_head)
    azimuth[grid_idx] = surf.azimuth[None, :]
    azimuth[dup_idx] = surf.azimuth[inner_cols]
    base_y = verts[:, 1].copy()
    normals = vertex_normals(verts, head_faces)
    if np.sum(normals[grid_idx[R // 2], 2] * np.cos(surf.azimuth)) < 0:  # make normals point outward
        head_faces, head_faces_uv = head_faces[:, [0, 2, 1]], head_faces_uv[:, [0, 2, 1]]
        normals = -normals
    arc = azimuth * 0.09  # metres across the face, roughly

    eye_sign = (1.0, -1.0)  # left (+x), right (-x)
    eye_bases = []
    for sgn in eye_sign:
        row = surf.front_row_nearest(_EYE_Y)
        col = int(np.argmin(np.abs(surf.azimuth - sgn * _EYE_AZIMUTH)))
        eye_bases.append((grid_idx[row, col], surf.azimuth[col]))

    def socket(sgn_index):
        _, az = eye_bases[sgn_index]
        return _gauss((azimuth - az) * 0.09, 0.011) * _gauss(base_y - _EYE_Y, 0.009)

    sockets = socket(0) + socket(1)
    nose_amp = np.interp(base_y, [-0.022, -0.012, -0.003, 0.015, 0.035, 0.045], [0, 0.012, 0.021, 0.010, 0.004, 0])
    nose_width = np.interp(base_y, [-0.02, 0.0, 0.035], [0.013, 0.012, 0.007])
    lips = (0.005 * _gauss(base_y - (mouth_y + 0.005), 0.004) + 0.0045 * _gauss(base_y - (mouth_y - 0.007), 0.004))
    lips *= _gauss(arc, 0.017)
    ears = sum(0.012 * _gauss(azimuth - sgn * np.pi / 2, 0.12) * _gauss(base_y - 0.005, 0.02) for sgn in eye_sign)
    displacement = (
        nose_amp * _gauss(arc, nose_width)
        - 0.0065 * sockets
        + 0.003 * _gauss(base_y - 0.045, 0.006) * _gauss(arc, 0.035)
        + sum(0.004 * _gauss(azimuth - sgn * 0.5, 0.12) * _gauss(base_y - 0.005, 0.012) for sgn in eye_sign)
        + lips
        + 0.006 * _gauss(base_y + 0.064, 0.011) * _gauss(arc, 0.016)
        + ears
    )
    verts += displacement[:, None] * normals
    verts[dup_idx, 1] -= 0.0015  # the lips part slightly at rest

    # ---- eyeballs, centred 10 mm behind the undisplaced surface at the eye
    eyes = []
    for k, sgn in enumerate(eye_sign):
        vid, _ = eye_bases[k]
        center = surf.grid.reshape(-1, 3)[vid - 1] - normals[vid] * 0.010
        uv_center = (0.70, 0.88) if sgn > 0 else (0.88, 0.88)
        eyes.append(_uv_cup(center, _EYE_RADIUS, uv_center, 0.075))

    vertices = [verts]
    all_faces = [head_faces]
    uvs = [head_uvs]
    faces_uv = [head_faces_uv]
    eyeball_idx = []
    equators = []
    v_off, uv_off = n_head, head_uvs.shape[0]
    for ev, euv, ef, equator in eyes:
        vertices.append(ev)
        all_faces.append(ef + v_off)
        uvs.append(euv)
        faces_uv.append(ef + uv_off)
        eyeball_idx.append(v_off + np.arange(len(ev)))
        equators.append(v_off + equator)
        v_off += len(ev)
        uv_off += len(euv)
    vertices = np.concatenate(vertices)
    V = vertices.shape[0]
    faces_all = np.concatenate(all_faces)
    uvs_all = np.concatenate(uvs)
    faces_uv_all = np.concatenate(faces_uv)

    # Per-vertex descriptors over the whole model (eyeballs take their socket's values).
    az_all = np.concatenate([azimuth] + [np.full(len(i), eye_bases[k][1]) for k, i in enumerate(eyeball_idx)])
    y_all = np.concatenate([base_y] + [np.full(len(i), _EYE_Y) for i in eyeball_idx])
    is_head = np.zeros(V, bool)
    is_head[:n_head] = True
    arc_all = az_all * 0.09

    # ---- regions (FLAME_masks keys)
    hairline = np.interp(np.abs(az_all), [0, 0.6, 1.3, 1.7, np.pi], [0.068, 0.062, 0.04, 0.035, -0.045])
    neck_line = np.interp(np.abs(az_all), [0, 1.0, np.pi], [-0.078, -0.07, -0.055])
    ear = {name: is_head & (np.abs(az_all - sgn * np.pi / 2) < 0.35) & (np.abs(y_all - 0.005) < 0.035)
           for name, sgn in (("left_ear", 1), ("right_ear", -1))}
    any_ear = ear["left_ear"] | ear["right_ear"]
    neck = is_head & (y_all < neck_line)
    scalp = is_head & (y_all > hairline) & ~any_ear
    face = is_head & (np.abs(az_all) < 1.25) & ~neck & ~scalp & ~any_ear
    eye_region = {}
    for k, name in enumerate(("left_eye_region", "right_eye_region")):
        eye_region[name] = face & (((arc_all - eye_bases[k][1] * 0.09) / 0.022) ** 2 + ((y_all - _EYE_Y) / 0.016) ** 2 < 1)
    boundary = np.zeros(V, bool)
    boundary[grid_idx[-1]] = True
    masks = {
        "face": face,
        "neck": neck,
        "scalp": scalp,
        "boundary": boundary,
        "left_eyeball": np.isin(np.arange(V), eyeball_idx[0]),
        "right_eyeball": np.isin(np.arange(V), eyeball_idx[1]),
        **ear,
        "forehead": face & (y_all > 0.04),
        "eye_region": eye_region["left_eye_region"] | eye_region["right_eye_region"],
        "nose": face & (np.abs(arc_all) < 0.018) & (y_all > -0.02) & (y_all < 0.035),
        "lips": face & (np.abs(arc_all) < 0.035) & (np.abs(y_all - mouth_y) < 0.014),
        **eye_region,
    }
    regions = {k: np.flatnonzero(m).astype(np.int64) for k, m in masks.items()}

    # ---- skinning weights: root, neck, jaw, left eye, right eye
    weights = np.zeros((V, 5))
    w_root = _smoothstep(-y_all, 0.10, 0.165) * is_head
    # The lower lip follows the jaw fully in the middle of the mouth and less towards the
    # corners, which stay attached to the upper lip; below it, the weight rises to 1 over a
    # band that is taller away from the middle. The field jumps only across the slit.
    mouth_half_width = abs(surf.azimuth[lip_cols[-1]]) * 0.09
    lateral = _smoothstep(np.abs(arc_all), 0.2 * mouth_half_width, 1.2 * mouth_half_width)
    depth_below_mouth = mouth_y - y_all
    jaw_band = 0.004 + 0.012 * lateral
    w_jaw = np.where(depth_below_mouth > 1e-6,
                     (1 - lateral) + lateral * _smoothstep(depth_below_mouth, 0.0, jaw_band), 0.0)
    w_jaw *= (1 - _smoothstep(np.abs(az_all), 0.9, 1.5)) * (1 - _smoothstep(-y_all, 0.075, 0.13)) * is_head
    w_jaw[dup_idx] = 1.0 - lateral[dup_idx]
    w_jaw = np.minimum(w_jaw, 1 - w_root)
    weights[:, 0] = w_root
    weights[:, 2] = w_jaw
    weights[:, 1] = (1 - w_root - w_jaw) * is_head
    weights[eyeball_idx[0], 3] = 1.0
    weights[eyeball_idx[1], 4] = 1.0

    # ---- joint regressor: each joint is the mean of a few vertices
    J_regressor = np.zeros((5, V))

    def mean_of(j, idx):
        J_regressor[j, idx] = 1.0 / len(idx)

    mean_of(0, grid_idx[-1])  # root: centre of the neck's bottom ring
    mean_of(1, grid_idx[surf.front_row_nearest(-0.06)])  # neck: centre of a ring under the skull
    tmj_row = surf.front_row_nearest(-0.012)
    tmj_cols = [int(np.argmin(np.abs(surf.azimuth - sgn * 1.35))) for sgn in eye_sign]
    mean_of(2, grid_idx[tmj_row, tmj_cols])  # jaw: between the two jaw hinges
    mean_of(3, equators[0])
    mean_of(4, equators[1])
    rest_joints = J_regressor @ vertices

    # ---- blendshapes
    shapedirs = np.zeros((V, 3, 400))
    centered = (vertices - _CENTER) / 0.1
    for k in range(300):
        freq = rng.normal(size=(4, 3)) * (1.0 + 2.5 * min(k, 150) / 150)
        phase = rng.uniform(0, 2 * np.pi, size=4)
        amp = rng.normal(size=(4, 3))
        field = np.sin(centered @ freq.T + phase) @ amp  # [V, 3]
        field /= np.sqrt((field**2).sum(1).mean())
        shapedirs[:, :, k] = field * 0.004 / (1 + k / 8)

    rest_normals = vertex_normals(vertices, faces_all)
    face_weight = (_smoothstep(1.35 - np.abs(az_all), 0, 0.4) * _smoothstep(y_all, -0.11, -0.06)
                   * (1 - _smoothstep(y_all, 0.06, 0.095)) * is_head)
    expr = np.zeros((V, 3, 100))
    # 0: jaw open: the jaw-skinned region swings down about the jaw joint.
    rot = np.deg2rad(12.0)
    rel = vertices - rest_joints[2]
    swung = np.stack([rel[:, 0], np.cos(rot) * rel[:, 1] - np.sin(rot) * rel[:, 2],
                      np.sin(rot) * rel[:, 1] + np.cos(rot) * rel[:, 2]], 1)
    expr[:, :, 0] = (swung - rel) * w_jaw[:, None]
    # 1: smile: mouth corners up, out and back; cheeks lift.
    for sgn, col in zip(eye_sign, (lip_cols[-1], lip_cols[0])):
        corner = _gauss(arc_all - surf.azimuth[col] * 0.09, 0.012) * _gauss(y_all - mouth_y, 0.012) * is_head
        expr[:, :, 1] += corner[:, None] * np.array([0.003 * np.sign(surf.azimuth[col]), 0.005, -0.002])
        cheek = _gauss(az_all - sgn * 0.5, 0.15) * _gauss(y_all - 0.0, 0.015) * is_head
        expr[:, :, 1] += cheek[:, None] * np.array([0.0, 0.002, 0.0015])
    # 2: brow raise: the brow band and forehead move up, with a forehead wrinkle.
    brow = _gauss(y_all - 0.045, 0.012) * _gauss(arc_all, 0.04) * is_head
    wrinkle = np.sin((y_all - 0.05) / 0.004) * _gauss(y_all - 0.058, 0.008) * _gauss(arc_all, 0.035) * is_head
    expr[:, :, 2] = brow[:, None] * np.array([0.0, 0.006, 0.001]) + (0.0006 * wrinkle)[:, None] * rest_normals
    # 3: eyes close: the lids cover the eyeballs.
    lid = np.zeros(V)
    lid[:n_head] = sockets
    expr[:, :, 3] = (0.0105 * lid)[:, None] * rest_normals
    # 4..99: smooth, local, decreasing-variance fields on the face.
    for k in range(4, 100):
        freq = rng.normal(size=(3, 3)) * 3.0
        phase = rng.uniform(0, 2 * np.pi, size=3)
        amp = rng.normal(size=(3, 3))
        field = np.sin(centered @ freq.T + phase) @ amp * face_weight[:, None]
        field /= max(np.sqrt((field**2).sum(1).mean()), 1e-12)
        expr[:, :, k] = field * 0.0015 / (1 + (k - 4) / 6)
    shapedirs[:, :, 300:] = expr
    # Eyeballs move rigidly with their socket under identity changes, and not with expressions.
    for k, idx in enumerate(eyeball_idx):
        shapedirs[idx, :, :300] = shapedirs[eye_bases[k][0], :, :300]
        shapedirs[idx, :, 300:] = 0.0

    # ---- pose correctives: small, smooth bulges where the neck and jaw bend
    posedirs = np.zeros((V, 3, 36))
    neck_zone = _gauss(y_all + 0.1, 0.03) * is_head
    chin_zone = _gauss(y_all + 0.08, 0.015) * _gauss(arc_all, 0.04) * is_head
    for e in range(9):
        posedirs[:, :, e] = neck_zone[:, None] * rng.normal(size=3) * 0.004
        posedirs[:, :, 9 + e] = chin_zone[:, None] * rng.normal(size=3) * 0.003

    upper = grid_idx[mouth_row, lip_cols]
    lower = np.concatenate([[grid_idx[mouth_row, lip_cols[0]]], dup_idx, [grid_idx[mouth_row, lip_cols[-1]]]])
    return HeadModel(
        v_template=vertices,
        faces=faces_all.astype(np.int64),
        shapedirs=shapedirs,
        posedirs=posedirs,
        J_regressor=J_regressor,
        lbs_weights=weights,
        parents=np.array([-1, 0, 1, 1, 1], np.int64),
        uvs=uvs_all,
        faces_uv=faces_uv_all.astype(np.int64),
        regions=regions,
        lip_ring_upper=upper.astype(np.int64),
        lip_ring_lower=lower.astype(np.int64),
    )

