"""The overlay: a subject's preprocessing outputs in place for the reader, images linked."""

from __future__ import annotations

import json
import shutil

import torch

from mega.cli import main
from mega.data.fixtures import write_fixture_subject
from mega.data.gaussian_avatars import SubjectDataset
from mega.data.overlay import has_extra


def test_overlay_puts_made_parsing_in_place_and_adds_the_one_frame_split(tmp_path):
    bare = write_fixture_subject(tmp_path / "bare", n_sequences=2, n_timesteps=2, n_cameras=9, extras=False)
    full = write_fixture_subject(tmp_path / "full", n_sequences=2, n_timesteps=2, n_cameras=9, extras=True)
    (bare / "transforms_onef.json").unlink(missing_ok=True)
    assert not has_extra(bare, "parsing") and has_extra(full, "parsing")
    made = tmp_path / "made_parsing"  # as `mega parse-faces` writes it: <sequence>/<stem>_labels.png
    for sequence in full.parent.glob("*_v16_*"):
        if (sequence / "parsing").is_dir():
            shutil.copytree(sequence / "parsing", made / sequence.name)
    before = sorted(p.name for p in bare.parent.rglob("*"))
    assert main(["overlay", str(bare), "--out", str(tmp_path / "overlay"), "--parsing", str(made)]) == 0
    union = tmp_path / "overlay" / bare.name
    assert sorted(p.name for p in bare.parent.rglob("*")) == before  # the subject is untouched
    original, overlaid = SubjectDataset(bare, "train"), SubjectDataset(union, "train")
    assert not original.has_parsing and overlaid.has_parsing
    a, b = original[5], overlaid[5]
    assert torch.equal(a["image"], b["image"]) and b["parsing"].shape == b["image"].shape[1:]
    onef = json.loads((union / "transforms_onef.json").read_text())
    assert {f["timestep_index"] for f in onef["frames"]} == {0} and len(onef["frames"]) == 8  # 8 train cameras
    assert len(SubjectDataset(union, "onef")) == 8
    assert not any(p.is_symlink() and not p.exists() for p in (tmp_path / "overlay").rglob("*"))


def test_overlay_names_what_is_missing(tmp_path, capsys):
    bare = write_fixture_subject(tmp_path / "bare", n_sequences=2, n_timesteps=1, n_cameras=9, extras=False)
    assert main(["overlay", str(bare), "--out", str(tmp_path / "o"), "--parsing", str(tmp_path / "none")]) == 2
    assert "none: the parsing folder given does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["overlay", str(bare), "--out", str(tmp_path / "o"), "--parsing", str(tmp_path / "empty")]) == 2
    assert "the parsing of sequence" in capsys.readouterr().err
    assert main(["overlay", str(bare), "--out", str(tmp_path / "o"), "--onef-timestep", "99"]) == 2
    assert "no frame has timestep_index 99" in capsys.readouterr().err
