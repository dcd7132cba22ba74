import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mega.cli import main
from mega.data.depth import read_depth
from mega.data.fixtures import write_fixture_subject
from mega.data.gaussian_avatars import SubjectDataset
from mega.data.parsing import LABEL
from mega.data.synth import build_geometric_detail, build_hair, hair_sway_m, synthesized_union
from mega.data.validate import validate_union
from mega.flame.toy import EXPRESSIONS

TINY = ["--width", "28", "--height", "40", "--sequences", "2", "--frames", "1", "--quiet"]


def make_subject(out: Path, *extra: str) -> Path:
    assert main(["synth", str(out), *TINY, *extra]) == 0
    return synthesized_union(out)


def frontal_parsing(union: Path) -> tuple[dict, np.ndarray]:
    """The first val frame (the frontal camera's) and its parsing labels [H, W]."""
    frame = json.loads((union / "transforms_val.json").read_text())["frames"][0]
    seq = (union / frame["file_path"]).parent.parent
    return frame, np.array(Image.open(seq / "parsing" / f"{Path(frame['file_path']).stem}_labels.png"))


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return make_subject(tmp_path_factory.mktemp("synth") / "synthetic")


def test_the_union_folder_is_found_from_the_summary_or_named_missing(subject, tmp_path):
    assert subject.is_dir() and synthesized_union(subject.parent) == subject
    with pytest.raises(FileNotFoundError, match=r"summary\.json: not found; synthesize the subject first"):
        synthesized_union(tmp_path)


def test_passes_the_validator_with_every_split(subject):
    assert validate_union(subject) == []
    for name in ("transforms_train.json", "transforms_val.json", "transforms_test.json", "transforms_onef.json",
                 "canonical_flame_param.npz", "sequences_trainval.txt", "sequences_test.txt"):
        assert (subject / name).is_file()
    train = json.loads((subject / "transforms_train.json").read_text())
    assert len(train["frames"]) == 1 * 15  # one train sequence × one frame × 15 cameras
    assert (subject.parent / "contact_sheet.png").is_file()
    with Image.open(subject.parent / "contact_sheet.png") as sheet:
        assert sheet.width >= 16 * 28


def test_images_masks_parsing_and_depth_agree(subject):
    frames = json.loads((subject / "transforms_test.json").read_text())["frames"]
    saw_hair = False
    for frame in frames:
        image = np.array(Image.open(subject / frame["file_path"])).astype(float) / 255
        fg = np.array(Image.open(subject / frame["fg_mask_path"])).astype(float) / 255
        seq = (subject / frame["file_path"]).parent.parent
        stem = Path(frame["file_path"]).stem
        parsing = np.array(Image.open(seq / "parsing" / f"{stem}_labels.png"))
        depth = read_depth(seq / "depths" / f"{stem}.npz")
        assert image.shape == (40, 28, 3) and fg.shape == parsing.shape == depth.shape == (40, 28)
        # White background wherever nothing is in front.
        assert np.all(image[fg == 0] == 1.0)
        # Depth only on the foreground, at head distance (the rig is 1 m away).
        assert np.all(fg[depth > 0] > 0.25)
        assert np.all((depth[depth > 0] > 0.8) & (depth[depth > 0] < 1.2))
        # Labels on the foreground; hair where hair is (dark), skin on the face.
        labelled = parsing > 0
        assert np.mean(fg[labelled] > 0.25) > 0.97
        hair = parsing == LABEL["hair"]
        if hair.any():
            saw_hair = True
            assert image[hair].mean() < 0.45
        assert (parsing == LABEL["skin"]).any()
    assert saw_hair


def test_frontal_camera_sees_eyes_nose_lips(subject):
    frame, parsing = frontal_parsing(subject)
    assert frame["camera_index"] == 8
    assert {LABEL["nose"], LABEL["u_lip"], LABEL["neck"]} <= set(np.unique(parsing).tolist())


def test_the_reader_reads_every_split(subject):
    for split in ("train", "val", "test", "onef"):
        ds = SubjectDataset(subject, split, parsing="require", depth="require")
        sample = ds[0]
        assert sample["image"].shape == (3, 40, 28)
        assert sample["depth"].shape == (1, 40, 28)


def test_same_seed_same_files_other_seed_other_files(subject, tmp_path):
    again = make_subject(tmp_path / "again")
    other = make_subject(tmp_path / "other", "--seed", "1")

    def digests(union: Path) -> dict[str, str]:
        root = union.parent
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}

    first = digests(subject)
    assert digests(again) == first
    different = digests(other)
    assert different.keys() == first.keys()
    assert sum(different[k] != first[k] for k in first) > len(first) // 2


def test_antialiased_hair_changes_only_the_hair_and_is_recorded(tmp_path):
    """--hair-render antialiased draws the strands with less coverage (each sub-pixel Gaussian
    keeps its mass instead of being drawn a pixel wide): the same head, lighter hair, and the
    summary says which render wrote it."""
    size = ["--width", "69", "--height", "100", "--hair", "long"]
    classic = make_subject(tmp_path / "classic", *size)
    antialiased = make_subject(tmp_path / "aa", *size, "--hair-render", "antialiased")
    summary = json.loads((antialiased.parent / "summary.json").read_text())
    assert summary["options"]["hair_render"] == "antialiased"
    frame, labels = frontal_parsing(classic)
    _, labels_aa = frontal_parsing(antialiased)
    image = np.asarray(Image.open(classic / frame["file_path"]), dtype=np.float64)[..., :3]
    image_aa = np.asarray(Image.open(antialiased / frame["file_path"]), dtype=np.float64)[..., :3]
    fg = np.asarray(Image.open(classic / frame["file_path"].replace("images", "fg_masks")), dtype=np.float64)
    fg_aa = np.asarray(Image.open(antialiased / frame["file_path"].replace("images", "fg_masks")), dtype=np.float64)
    assert fg_aa.sum() < 0.97 * fg.sum()  # the thin strands cover less
    assert (labels_aa == LABEL["hair"]).sum() < (labels == LABEL["hair"]).sum()
    # Away from the hair (of either render) the two images are the same, up to the faint tails of
    # strands (a few 8-bit levels).
    from scipy.ndimage import binary_dilation

    near_hair = binary_dilation((labels == LABEL["hair"]) | (labels_aa == LABEL["hair"]) | (fg != fg_aa), iterations=2)
    skin = (labels != 0) & ~near_hair
    assert skin.sum() > 200
    assert np.abs(image - image_aa)[skin].max() <= 3
    assert np.abs(image - image_aa)[skin].mean() < 0.05
    assert np.abs(image - image_aa)[~skin].max() > 20


def test_clumped_hair_shares_tint_and_path_with_its_neighbours(toy_enhanced):
    """hair_clumps > 0 grows the strands in locks: a strand's nearest neighbour at the scalp has
    nearly its tint and ends near its tip (the same clump, mostly), where independent strands
    differ as much from their neighbour as from any strand. The strands' roots and count (the
    hair's coverage of the scalp) stay those of the independent hair."""
    from scipy.spatial import cKDTree

    from mega.data.synth import build_hair

    colour = np.array([0.2, 0.13, 0.08])
    K = 16  # long hair's Gaussians per strand
    measures = {}
    for clumps in (0, 100):
        hair = build_hair(toy_enhanced, "long", 0, colour, clumps=clumps)
        assert len(hair.means) == 2500 * K
        means = hair.means.numpy().reshape(-1, K, 3)
        tint = hair.colors.numpy().reshape(-1, K, 3)[:, 0, 0] / colour[0]
        roots, tips = means[:, 0], means[:, -1]
        neighbour = cKDTree(roots).query(roots, k=2)[1][:, 1]
        measures[clumps] = (roots, np.median(np.abs(tint - tint[neighbour])),
                            np.median(np.linalg.norm(tips - tips[neighbour], axis=1)), np.abs(tint - tint.mean()).mean())
    roots, tint_step, tip_gap, spread = measures[0]
    roots_c, tint_step_c, tip_gap_c, spread_c = measures[100]
    assert roots_c.shape == roots.shape and np.abs(roots_c - roots).max() < 0.01  # the first Gaussian: near the same roots
    assert tint_step_c < 0.3 * tint_step  # a lock shares its tint (measured 0.2)
    assert spread_c > 0.5 * spread  # across the head the tints still vary as much
    assert tip_gap_c < 0.6 * tip_gap  # and its strands end together (measured 0.39)
    # No clumps is the independent hair itself, draw for draw.
    again = build_hair(toy_enhanced, "long", 0, colour)
    independent = build_hair(toy_enhanced, "long", 0, colour, clumps=0)
    assert torch.equal(again.means, independent.means) and torch.equal(again.colors, independent.colors)


def test_clumps_and_strands_reach_the_written_subject(tmp_path):
    size = ["--width", "69", "--height", "100", "--hair", "long"]
    clumped = make_subject(tmp_path / "clumped", *size, "--cameras", "9", "--hair-clumps", "60", "--hair-strands", "3000")
    options = json.loads((clumped.parent / "summary.json").read_text())["options"]
    assert (options["hair_clumps"], options["hair_strands"]) == (60, 3000)
    _, labels = frontal_parsing(clumped)
    assert {LABEL["l_eye"], LABEL["r_eye"]} <= set(np.unique(labels).tolist())
    assert (labels == LABEL["hair"]).sum() > 300


def test_validator_names_file_and_field(tmp_path):
    union = write_fixture_subject(tmp_path / "fixture", n_sequences=3, n_timesteps=1, width=12, height=16)
    assert validate_union(union) == []
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "fixture", broken, symlinks=True)
    union = broken / union.name
    train = json.loads((union / "transforms_train.json").read_text())
    del train["frames"][0]["fl_x"]
    val = json.loads((union / "transforms_val.json").read_text())
    train["frames"].append(val["frames"][0])  # camera 8 leaks into train
    (union / "transforms_train.json").write_text(json.dumps(train))
    problems = validate_union(union)
    assert any("transforms_train.json" in p and "fl_x" in p for p in problems)
    assert any("holds camera 8" in p for p in problems)


def test_bad_options_are_refused(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--cameras", "4", "--quiet"]) == 2
    assert "9 to 64 cameras" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "none"), *TINY, "--hair-strands", "0"]) == 2
    assert "--hair-strands must be at least 1 (got 0)" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "back"), *TINY, "--hair-sway-mm", "-1"]) == 2
    assert "--hair-sway-mm at least 0 (got -1.0)" in capsys.readouterr().err


def test_the_hairs_sway_follows_its_amplitude_and_stops_at_zero():
    """The tips swing side to side by up to the amplitude and front to back by half of it, never up
    or down; twice the amplitude, twice the sway; at 0 the hair moves with the head alone."""
    sways = torch.stack([hair_sway_m(t, 3, 4.0) for t in range(60)])
    assert 0.0039 < float(sways[:, 0].abs().max()) <= 0.004 + 1e-9
    assert 0.00195 < float(sways[:, 2].abs().max()) <= 0.002 + 1e-9
    assert bool(sways[:, 1].eq(0).all())
    assert torch.allclose(hair_sway_m(5, 3, 8.0), 2 * hair_sway_m(5, 3, 4.0))
    assert not torch.allclose(hair_sway_m(5, 3, 4.0), hair_sway_m(5, 7, 4.0))  # the seed shifts its phase
    assert torch.equal(torch.stack([hair_sway_m(t, 3, 0.0) for t in range(60)]), torch.zeros(60, 3))


def test_long_hair_leaves_the_face_open(tmp_path):
    """The long style falls beside and behind the head: the frontal view sees both eyes (a face
    that never sees its eyes cannot wear another hairstyle), and far more hair than the short."""
    size = ["--width", "69", "--height", "100"]
    _, long_hair = frontal_parsing(make_subject(tmp_path / "long", "--hair", "long", *size))
    _, short_hair = frontal_parsing(make_subject(tmp_path / "short", *size))
    for labels in (long_hair, short_hair):
        assert {LABEL["l_eye"], LABEL["r_eye"]} <= set(np.unique(labels).tolist())
    assert (long_hair == LABEL["hair"]).sum() > 1.3 * (short_hair == LABEL["hair"]).sum()


def test_a_rig_of_nine_to_sixty_four_cameras_keeps_camera_8_frontal(tmp_path):
    from mega.data.rig import NERSEMBLE_SERIALS, nersemble_like_rig, rig_serials

    for n in (*range(9, 17), 20, 48, 64):
        centres = torch.stack([torch.linalg.inv(c.world_to_camera)[:3, 3] for c in nersemble_like_rig(28, 40, n)])
        frontness = centres[:, 2] / centres.norm(dim=1)
        assert int(frontness.argmax()) == 8, n
        serials = rig_serials(n)
        assert len(set(serials)) == n and serials[:16] == list(NERSEMBLE_SERIALS[:n])
    union = make_subject(tmp_path / "nine", "--cameras", "9")
    assert validate_union(union) == []
    # Past NeRSemble's 16 cameras: ids of their own, the frontal camera still the val camera.
    union = make_subject(tmp_path / "twenty", "--cameras", "20")
    assert validate_union(union) == []
    val = json.loads((union / "transforms_val.json").read_text())["frames"]
    assert {frame["camera_id"] for frame in val} == {"222200037"}
    train = json.loads((union / "transforms_train.json").read_text())["frames"]
    assert len({frame["camera_id"] for frame in train}) == 19
    assert len(set(SubjectDataset(union, "train").frames.camera_index)) == 19


def test_hair_quaternions_round_trip():
    import torch

    from mega.data.synth import matrix_to_quaternion, quaternion_multiply
    from mega.render.gaussians import quaternion_to_matrix

    q = torch.nn.functional.normalize(torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    R = quaternion_to_matrix(q)
    back = torch.as_tensor(matrix_to_quaternion(R.numpy()))
    torch.testing.assert_close(quaternion_to_matrix(back), R)
    # Composition of quaternions is composition of rotations.
    torch.testing.assert_close(quaternion_to_matrix(quaternion_multiply(q[:25], q[25:])), R[:25] @ R[25:])


def test_geometric_detail_stays_on_the_face(toy_enhanced):
    detail = build_geometric_detail(toy_enhanced, seed=0)
    face = torch.as_tensor(toy_enhanced.region_mask("face"))
    off_face = ~face
    assert float(detail.static[off_face].abs().max()) == 0.0
    assert float(detail.smile_bulge[off_face].abs().max()) == 0.0
    assert 0.002 < float(detail.static.abs().max()) < 0.008  # metres: millimetres of detail
    assert float(detail.smile_bulge.max()) > 0.001
    # The bulge follows the smile coefficient; other expressions leave the static detail.
    vertices = torch.as_tensor(toy_enhanced.v_template, dtype=torch.float32)
    faces = torch.as_tensor(toy_enhanced.faces)
    expr = np.zeros(100)
    neutral = detail.apply(vertices, faces, expr)
    expr[EXPRESSIONS["smile"]] = 1.0
    smiling = detail.apply(vertices, faces, expr)
    moved = (smiling - neutral).norm(dim=1)
    assert torch.allclose(moved, detail.smile_bulge, atol=1e-6)


def test_the_config_schema_the_cli_and_the_options_agree_on_the_defaults():
    """A subject made by the workflow with nothing set, by `mega synth` with no option and by
    SynthOptions() is the same subject: the defaults are written in three places (the workflow
    reads the schema's, so that its parse stays torch-free), so they are pinned here.
    The workflow's `synth_args` names only non-default hair options; its dry-run test
    (tests/test_workflow.py) pins it to the schema."""
    import dataclasses

    import yaml

    from mega.cli import build_parser
    from mega.data.synth import SynthOptions

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    schema_defaults = {k: v["default"] for k, v in schema["properties"]["synthetic"]["properties"].items()
                       if "default" in v and not isinstance(v["default"], (dict, bool))}
    synth_parser = build_parser()._subparsers._group_actions[0].choices["synth"]
    cli_defaults = {a.dest: a.default for a in synth_parser._actions}
    options = {f.name: f.default for f in dataclasses.fields(SynthOptions)}
    # the schema's and the CLI's names of SynthOptions' fields
    schema_names = {"hairstyle": "hair"}
    cli_names = {"frames": "frames_per_sequence", "cameras": "n_cameras", "sequences": "n_sequences"}
    assert set(schema_defaults) == {"seed", "width", "height", "frames_per_sequence", "hairstyle", "supersample",
                                    "hair_render", "hair_clumps", "hair_strands", "hair_sway_mm"}
    for key, value in schema_defaults.items():
        assert options[schema_names.get(key, key)] == value, key
    for key, value in cli_defaults.items():
        if cli_names.get(key, key) in options:
            assert options[cli_names.get(key, key)] == value, key
    assert set(options) <= {cli_names.get(k, k) for k in cli_defaults}  # every option has its command-line flag
    # A subject's camera count: the schema's range is `mega synth`'s (9 to MAX_SYNTHETIC_CAMERAS).
    from mega.data.rig import MAX_SYNTHETIC_CAMERAS

    others = schema["properties"]["synthetic"]["properties"]["others"]["additionalProperties"]["properties"]
    assert (others["cameras"]["minimum"], others["cameras"]["maximum"]) == (9, MAX_SYNTHETIC_CAMERAS)


def test_hair_is_rooted_on_the_scalps_triangles_and_needs_them(toy_head):
    hair = build_hair(toy_head, "short", seed=0, colour=np.array([0.3, 0.2, 0.1]), n_strands=200)
    roots = hair.means[hair.sway <= hair.sway.min() + 1e-6].numpy()  # each strand's first Gaussian
    assert roots.shape == (200, 3)
    # Every root is nearer a corner of the scalp's triangles than any vertex off the scalp.
    on_scalp = toy_head.v_template[np.unique(toy_head.faces[toy_head.scalp_triangles()])]
    off_scalp = toy_head.v_template[~toy_head.region_mask("scalp")]
    nearest = lambda vertices: np.linalg.norm(roots[:, None] - vertices[None], axis=-1).min(1)  # noqa: E731
    assert (nearest(on_scalp) < nearest(off_scalp)).all()
    bald = toy_head.replace(regions={k: v for k, v in toy_head.regions.items() if k != "scalp"})
    with pytest.raises(ValueError, match="'scalp' region"):
        build_hair(bald, "short", seed=0, colour=np.array([0.3, 0.2, 0.1]), n_strands=200)
