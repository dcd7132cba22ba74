"""Ingest of a subject folder: a valid one is summarised, a broken one fails before any
training with every problem listed."""

from __future__ import annotations

import json
import shutil

import numpy as np

from mega.cli import main
from mega.data.fixtures import write_fixture_subject
from mega.data.ingest import ingest_subject


def test_a_valid_subject_is_inventoried(tmp_path):
    union = write_fixture_subject(tmp_path / "data")
    assert main(["ingest", str(union), "--out", str(tmp_path / "out")]) == 0
    inventory = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert inventory["problems"] == [] and inventory["extras"] == {"parsing": "all", "depths": "all"}
    assert inventory["splits"]["val"]["cameras"] == [8] and inventory["splits"]["train"]["with_parsing"] > 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["splits"]) >= {"train", "val", "test"}


def test_a_subject_without_extras_is_valid_and_says_so(tmp_path):
    union = write_fixture_subject(tmp_path / "data", extras=False)
    inventory, problems = ingest_subject(union)
    assert problems == [] and inventory["extras"] == {"parsing": "none", "depths": "none"}


def test_every_problem_is_listed_with_its_file(tmp_path, capsys):
    union = write_fixture_subject(tmp_path / "data")
    sequence = union.parent / "999_EXP-1_v16_synthetic"
    shutil.rmtree(sequence / "fg_masks")  # every mask of one sequence
    (sequence / "parsing" / "00000_03_labels.png").unlink()  # parsing for all images but one
    flame = sequence / "flame_param" / "00001.npz"
    with np.load(flame) as npz:
        params = dict(npz)
    params["expr"] = params["expr"][:, :50]
    np.savez(flame, **params)
    assert main(["ingest", str(union), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fg_mask_path" in err and "fg_masks/00000_00.png" in err
    assert f"{flame}: 'expr'" in err
    assert "have parsing/ files" in err
    inventory = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert len(inventory["problems"]) >= 3 and not (tmp_path / "out" / "summary.json").exists()


def test_a_missing_folder_is_named(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere: folder not found" in capsys.readouterr().err
    (tmp_path / "union.txt").write_text("a file, not the folder")
    assert main(["ingest", str(tmp_path / "union.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "union.txt: a file, expected the UNION folder (subjects.<id>.union" in capsys.readouterr().err


def test_a_missing_split_file_is_reported_once_and_a_missing_parsing_folder_by_its_path(tmp_path):
    import pytest

    from mega.data.overlay import build_overlay
    from mega.errors import DataError

    union = write_fixture_subject(tmp_path / "data", n_sequences=2, n_timesteps=1)
    with pytest.raises(DataError, match="nowhere: the parsing folder given does not exist"):
        build_overlay(union, tmp_path / "overlay", parsing_dir=tmp_path / "nowhere")
    (union / "transforms_val.json").unlink()
    _, problems = ingest_subject(union)
    assert sum("transforms_val.json" in p for p in problems) == 1, problems


def test_a_flame_parameter_file_that_is_not_an_npz_is_named_and_the_check_goes_on(tmp_path):
    union = write_fixture_subject(tmp_path / "data", extras=False)
    (union / "canonical_flame_param.npz").write_text("not an npz")
    flame = union.parent / "999_EXP-1_v16_synthetic" / "flame_param" / "00001.npz"
    flame.write_text("not an npz")
    _, problems = ingest_subject(union)
    for path in (union / "canonical_flame_param.npz", flame.resolve()):
        assert any(p.startswith(f"{path}: not a readable .npz") and "expected GaussianAvatars' FLAME parameters" in p
                   for p in problems), problems
    assert not any("the layout check stopped" in p for p in problems), problems


def test_a_split_file_that_is_not_json_is_reported_once_and_the_rest_is_still_checked(tmp_path):
    union = write_fixture_subject(tmp_path / "data", extras=False)
    (union / "transforms_test.json").write_text('{"frames": [')
    train = json.loads((union / "transforms_train.json").read_text())
    train["frames"][0]["transform_matrix"] = "identity"
    (union / "transforms_train.json").write_text(json.dumps(train))
    (union / "canonical_flame_param.npz").write_text("not an npz")
    _, problems = ingest_subject(union)
    assert sum("transforms_test.json" in p for p in problems) == 1, problems
    assert any("transforms_train.json: frame 0: 'transform_matrix'" in p for p in problems), problems
    assert any(p.startswith(f"{union / 'canonical_flame_param.npz'}: not a readable .npz") for p in problems), problems
    assert not any("the layout check stopped" in p for p in problems), problems


def test_an_image_that_is_not_one_or_not_of_its_size_is_named_and_many_are_counted(tmp_path):
    from PIL import Image

    union = write_fixture_subject(tmp_path / "data", extras=False)
    train = json.loads((union / "transforms_train.json").read_text())
    frames = train["frames"]
    onef = [f for f in frames if f["timestep_index"] == frames[0]["timestep_index"]]
    (union / "transforms_onef.json").write_text(json.dumps({**train, "frames": onef}))
    w, h = frames[0]["w"], frames[0]["h"]
    first = union / frames[0]["file_path"]
    first.write_bytes(b"not a png")
    resized = [union / f["fg_mask_path"] for f in frames]
    for mask in resized:
        Image.new("L", (w // 2, h // 2)).save(mask)
    _, problems = ingest_subject(union)
    # Named once, though the one-frame split holds the same file.
    assert sum(p.startswith(f"{first.resolve()}: not a readable image") for p in problems) == 1, problems
    named = [p for p in problems if "mask is" in p and "transforms_train.json frame" in p]
    assert len(named) == 3 and f"{w // 2}x{h // 2} (w x h)" in named[0] and f"says {w}x{h}" in named[0], problems
    assert any(p.endswith(f"({'mask size'}), {len(frames)} of {len(frames)} in all") for p in problems), problems
    assert main(["ingest", str(union), "--out", str(tmp_path / "out")]) == 2
