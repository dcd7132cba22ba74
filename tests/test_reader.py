"""The GaussianAvatars-layout reader on fixture subjects written in the exact layout."""

import gc
import json
import shutil

import numpy as np
import psutil
import pytest
import torch
from torch.utils.data import DataLoader

from mega.data.fixtures import write_fixture_subject
from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.errors import DataError


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return write_fixture_subject(tmp_path_factory.mktemp("subject"), n_sequences=3, n_timesteps=2)


@pytest.fixture
def broken(tmp_path, subject):
    """A private copy of the fixture to break."""
    shutil.copytree(subject.parent, tmp_path / "data")
    return tmp_path / "data" / subject.name


def test_layout_and_splits(subject):
    names = {p.name for p in subject.iterdir()}
    assert {"transforms_train.json", "transforms_val.json", "transforms_test.json", "canonical_flame_param.npz",
            "sequences_trainval.txt", "sequences_test.txt"} <= names
    train, val, test = (SubjectDataset(subject, s) for s in ("train", "val", "test"))
    assert len(train) == 2 * 2 * 15 and len(val) == 2 * 2 and len(test) == 2 * 16
    assert set(val.frames.camera_index.tolist()) == {8}
    assert 8 not in set(train.frames.camera_index.tolist())
    assert set(test.frames.camera_index.tolist()) == set(range(16))
    frame = json.loads((subject / "transforms_train.json").read_text())["frames"][0]
    assert frame["file_path"].startswith("../") and "/images/" in frame["file_path"]


def test_samples_hold_the_right_images_and_extras(subject):
    ds = SubjectDataset(subject, "test")
    assert ds.has_parsing and ds.has_depth
    for i in (0, 5, len(ds) - 1):
        s = ds[i]
        assert s["image"].shape == (3, 32, 22) and s["image"].dtype == torch.float32
        centre = (s["image"][:, 16, 11] * 255).round().int().tolist()
        assert centre == [s["timestep_index"] % 256, s["camera_index"] * 16, 128]
        assert s["fg_mask"][0, 16, 11] == 1 and s["fg_mask"][0, 0, 0] == 0
        assert s["parsing"].dtype == torch.int64 and s["parsing"][16, 11] == 1
        assert s["depth"][0, 16, 11] == pytest.approx(1.0 + 0.001 * s["camera_index"])
        assert s["depth"][0, 0, 0] == 0
        assert s["flame"]["expr"].shape == (100,) and s["flame"]["eyes_pose"].shape == (6,)
        # The camera looks at the head: the origin projects inside the image.
        px, depth = s["camera"].project(torch.zeros(1, 3))
        assert 0 < px[0, 0] < 22 and 0 < px[0, 1] < 32 and depth.item() > 0


def test_dataloader_with_workers(subject):
    loader = DataLoader(SubjectDataset(subject, "train"), batch_size=8, shuffle=True, num_workers=2,
                        collate_fn=collate_samples)
    seen = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 22)
        assert batch["camera"].world_to_camera.shape == (batch["image"].shape[0], 4, 4)
        assert batch["flame"]["shape"].shape == (batch["image"].shape[0], 300)
        seen += batch["image"].shape[0]
    assert seen == 60


def test_symlinked_union_folder(subject, tmp_path):
    link = tmp_path / "306"
    link.symlink_to(subject, target_is_directory=True)
    ds = SubjectDataset(link, "val")
    assert ds.image_path(0).is_file() and ds[0]["image"].shape == (3, 32, 22)


def test_extras_can_be_required_or_switched_off(subject, broken):
    assert not SubjectDataset(subject, "val", parsing="off", depth="off").has_depth
    assert "parsing" not in SubjectDataset(subject, "val", parsing="off")[0]
    for seq in broken.parent.glob("999_EXP-1_*"):
        shutil.rmtree(seq / "depths")
    assert not SubjectDataset(broken, "train").has_depth
    with pytest.raises(DataError, match="depths: folder not found"):
        SubjectDataset(broken, "train", depth="require")


def test_memory_stays_flat_over_2000_images(tmp_path):
    union = write_fixture_subject(tmp_path, n_sequences=3, n_timesteps=70, extras=False)
    ds = SubjectDataset(union, "train")
    assert len(ds) >= 2000
    process = psutil.Process()
    for i in range(200):
        ds[i]
    gc.collect()
    rss_start = process.memory_info().rss
    for i in range(200, len(ds)):
        ds[i]
    gc.collect()
    growth_mb = (process.memory_info().rss - rss_start) / 2**20
    assert growth_mb < 20, f"RSS grew by {growth_mb:.1f} MB over {len(ds) - 200} images"


# ---- bad input: each gets an error naming the file and the field


def _edit_json(path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_missing_image(broken):
    ds = SubjectDataset(broken, "val", check_files=False)
    image = ds.image_path(1)
    image.unlink()
    with pytest.raises(DataError, match=f"{image.name}: file not found"):
        ds[1]
    with pytest.raises(DataError, match=rf"{image.name}: file not found \(frame 1, field 'file_path'"):
        SubjectDataset(broken, "val")


def test_truncated_png(broken):
    ds = SubjectDataset(broken, "val")
    image = ds.image_path(2)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{image.name}: cannot decode image.*truncated"):
        ds[2]


def test_frame_without_transform_matrix(broken):
    _edit_json(broken / "transforms_val.json", lambda m: m["frames"][3].pop("transform_matrix"))
    with pytest.raises(DataError, match=r"transforms_val\.json: frame 3 has no field 'transform_matrix'"):
        SubjectDataset(broken, "val")


def test_malformed_json_and_bad_matrix(broken):
    _edit_json(broken / "transforms_val.json", lambda m: m["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]))
    with pytest.raises(DataError, match=r"frame 0: 'transform_matrix' has shape \(2, 2\), expected \(4, 4\)"):
        SubjectDataset(broken, "val")
    (broken / "transforms_test.json").write_text('{"frames": [')
    with pytest.raises(DataError, match=r"transforms_test\.json: invalid JSON at line 1"):
        SubjectDataset(broken, "test")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["frames"][0].update(transform_matrix=[["a"] * 4] * 4), r"frame 0: 'transform_matrix' = .* is not a 4 x 4"),
    (lambda m: m["frames"][1].update(fl_x="wide"), r"frame 1: 'fl_x' = 'wide' is not a number"),
    (lambda m: m["frames"][2].update(timestep_index="first"), r"frame 2: 'timestep_index' = 'first' is not a number"),
    (lambda m: m["frames"][2].update(camera_index=8.5), r"frame 2: 'camera_index' = 8.5 is not a whole number"),
    (lambda m: m["frames"].__setitem__(0, [1, 2]), r"frame 0 is a list, expected an object"),
])
def test_non_numeric_fields_are_named(broken, edit, message):
    _edit_json(broken / "transforms_val.json", edit)
    with pytest.raises(DataError, match=rf"transforms_val\.json: {message}"):
        SubjectDataset(broken, "val")


def test_transforms_json_that_is_a_list(broken):
    (broken / "transforms_val.json").write_text("[1, 2, 3]")
    with pytest.raises(DataError, match=r"transforms_val\.json: expected a JSON object .* got a list"):
        SubjectDataset(broken, "val")


def test_depth_coordinates_out_of_range(tmp_path):
    from mega.data.depth import read_depth

    path = tmp_path / "depth.npz"
    np.savez(path, coords=np.array([[0, 5], [0, 1]]), data=np.array([1.0, 1.0], np.float32), shape=np.array([4, 4]))
    with pytest.raises(DataError, match=r"depth\.npz: 'coords' must be whole row/column indices inside the 4x4 map"):
        read_depth(path)


def test_flame_npz_with_wrong_shape(broken):
    ds = SubjectDataset(broken, "val")
    path = ds.frames.resolve(ds.frames.flame_paths[0])
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["expr"] = np.zeros((1, 50), np.float32)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"{path.name}: 'expr' has shape \(1, 50\), expected \(1, 100\)"):
        ds[0]


def test_split_naming_a_missing_sequence(broken):
    listing = broken / "sequences_trainval.txt"
    listing.write_text(listing.read_text() + "999_EXP-9_v16_synthetic\n")
    with pytest.raises(DataError, match=r"sequences_trainval\.txt: line 3 names sequence '999_EXP-9_v16_synthetic'"):
        SubjectDataset(broken, "train")


def test_image_size_must_match_json(broken):
    _edit_json(broken / "transforms_val.json", lambda m: [f.update(w=40) for f in m["frames"]])
    with pytest.raises(DataError, match=r"image is 22x32 \(w x h\), the JSON says 40x32"):
        SubjectDataset(broken, "val")[0]
