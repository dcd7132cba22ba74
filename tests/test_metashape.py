"""Depth import from a Metashape-style export that the test writes from a subject's exact depth,
under a known similarity transform and chunk scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from mega.cli import main
from mega.data.camera import opengl_to_opencv_c2w
from mega.data.depth import read_depth
from mega.data.gaussian_avatars import SubjectFrames
from mega.data.metashape import resize_nearest
from mega.errors import DataError

INTERNAL_PER_METRE = 3.7   # Metashape's arbitrary internal units
CHUNK_SCALE = 0.42         # chunk transform: internal → Metashape world


def write_export(union: Path, export: Path, swap_sequences: bool = False) -> int:
    """One chunk per (sequence, timestep): cameras.xml and depth/<label>.tif in internal units."""
    rng = np.random.default_rng(3)
    Rg, tg = Rotation.random(random_state=4).as_matrix(), rng.normal(size=3)
    Rc, tc = Rotation.random(random_state=5).as_matrix(), rng.normal(size=3)
    chunks: dict[tuple[str, str], list] = {}
    for split in ("train", "val", "test"):
        frames = SubjectFrames(union, split)
        for i in range(len(frames)):
            image = frames.resolve(frames.image_paths[i])
            chunks.setdefault((image.parent.parent.name, image.stem.split("_")[0]), []).append(
                (image, opengl_to_opencv_c2w(frames.c2w_opengl[i])))
    sequences = sorted({s for s, _ in chunks})
    for (sequence, frame), views in chunks.items():
        if swap_sequences:  # a wrong export: another sequence's cameras, shuffled
            sequence = sequences[(sequences.index(sequence) + 1) % len(sequences)]
        folder = export / sequence / frame
        (folder / "depth").mkdir(parents=True, exist_ok=True)
        cameras = []
        for k, (image, c2w) in enumerate(views):
            internal = np.eye(4)
            internal[:3, :3] = Rg @ c2w[:3, :3]
            internal[:3, 3] = INTERNAL_PER_METRE * (Rg @ c2w[:3, 3] + tg)
            if swap_sequences:
                internal[:3, 3] += rng.normal(size=3)
            matrix = " ".join(f"{v:.12g}" for v in internal.ravel())
            cameras.append(f'<camera id="{k}" sensor_id="0" label="{image.stem}"><transform>{matrix}</transform></camera>')
            depth = read_depth(image.parent.parent / "depths" / f"{image.stem}.npz")
            Image.fromarray((depth * INTERNAL_PER_METRE).astype(np.float32), mode="F").save(folder / "depth" / f"{image.stem}.tif")
        rotation = " ".join(f"{v:.12g}" for v in Rc.ravel())
        translation = " ".join(f"{v:.12g}" for v in tc)
        (folder / "cameras.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<document version="1.5.0"><chunk label="Chunk 1">'
            '<sensors><sensor id="0" type="frame"><calibration type="frame" class="adjusted">'
            '<resolution width="22" height="32"/><f>64</f></calibration></sensor></sensors>'
            f'<cameras>{"".join(cameras)}</cameras><transform><rotation>{rotation}</rotation>'
            f'<translation>{translation}</translation><scale>{CHUNK_SCALE}</scale></transform></chunk></document>')
    return len(chunks)


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """The synthetic subject (exact depth rendered from its mesh), 9 cameras, 2 sequences × 2 frames."""
    out = tmp_path_factory.mktemp("ms") / "synthetic"
    assert main(["synth", str(out), "--width", "28", "--height", "40", "--sequences", "2", "--frames", "2",
                 "--cameras", "9", "--quiet"]) == 0
    return out / json.loads((out / "summary.json").read_text())["union"]


def test_depth_is_recovered_within_a_millimetre(subject, tmp_path):
    n_chunks = write_export(subject, tmp_path / "export")
    assert main(["import-depth", str(subject), "--export", str(tmp_path / "export"), "--out", str(tmp_path / "depths"),
                 "--quiet"]) == 0
    written = sorted((tmp_path / "depths").rglob("*.npz"))
    assert len(written) == 2 * 2 * 9 and n_chunks == 4
    worst = 0.0
    for path in written:
        truth = read_depth(subject.parent / path.parent.name / "depths" / path.name)
        got = read_depth(path)
        assert np.array_equal(got > 0, truth > 0)
        worst = max(worst, float(np.abs(got - truth).max()))
    assert worst < 1e-3  # metres


def test_a_depth_export_of_other_cameras_is_refused(subject, tmp_path, capsys):
    write_export(subject, tmp_path / "export", swap_sequences=True)
    assert main(["import-depth", str(subject), "--export", str(tmp_path / "export"), "--out", str(tmp_path / "d"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cameras.xml: its cameras do not match the subject's" in err


def test_malformed_exports_are_named(subject, tmp_path, capsys):
    sequence = Path(SubjectFrames(subject, "train").resolve(SubjectFrames(subject, "train").image_paths[0])).parent.parent
    folder = tmp_path / "export" / sequence.name / "00000"
    folder.mkdir(parents=True)
    (folder / "cameras.xml").write_text("<document><chunk><cameras><camera label='00000_00'><transform>1 2 x"
                                        "</transform></camera></cameras></chunk></document>")
    assert main(["import-depth", str(subject), "--export", str(tmp_path / "export"), "--out", str(tmp_path / "d")]) == 2
    assert "camera '00000_00' <transform> holds something that is not a number" in capsys.readouterr().err
    with pytest.raises(DataError, match="no <sequence>/<frame>/cameras.xml"):
        from mega.data.metashape import import_metashape_depth
        import_metashape_depth(subject, tmp_path, tmp_path / "d")


def test_downscaled_depth_maps_are_resized_nearest():
    depth = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(resize_nearest(depth, 4, 6), depth.repeat(2, 0).repeat(2, 1))
