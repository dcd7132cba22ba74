"""The mega command's subcommands, as workflow rules call them."""

import json

import pytest

from mega.cli import main
from mega.data.fixtures import write_fixture_subject
from mega.flame import load_head_model


def test_head_model_writes_loadable_files_summary_and_preview(tmp_path):
    assert main(["head-model", "--source", "toy", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    head = load_head_model(tmp_path / "head_model.pkl", tmp_path / "head_masks.pkl", tmp_path / "head_template.obj")
    assert summary["base"]["vertices"] == head.n_vertices
    assert summary["enhanced"]["vertices"] > 3 * head.n_vertices
    assert summary["enhanced_region_vertices"]["teeth"] == 90
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_flame_source_without_paths_is_a_config_error(tmp_path, capsys):
    assert main(["head-model", "--source", "flame", "--out", str(tmp_path)]) == 2
    assert "head_model.flame.model is not set (--model on the command line)" in capsys.readouterr().err


def test_inspect_subject(tmp_path):
    union = write_fixture_subject(tmp_path / "data", n_sequences=2, n_timesteps=1)
    out = tmp_path / "summary.json"
    assert main(["inspect-subject", str(union), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["splits"]["val"]["cameras"] == [8]
    assert summary["splits"]["test"]["frames"] == 16
    assert summary["splits"]["train"]["image_hw"] == [32, 22]


def test_inspect_subject_of_a_folder_without_splits_is_an_error(tmp_path, capsys):
    assert main(["inspect-subject", str(tmp_path / "missing"), "--out", str(tmp_path / "summary.json")]) == 2
    err = capsys.readouterr().err
    assert "missing: no transforms_train.json" in err and "GaussianAvatars format" in err
    assert not (tmp_path / "summary.json").exists()


_PAGE_FAULTS_OF_A_REUSED_TENSOR = """
import os, resource, sys
import torch
from mega.cli import main
code = main(["inspect-subject", os.devnull + "/missing", "--out", os.devnull])  # fails fast on bad input
faults = []
for _ in range(30):  # as a training loop makes and frees its step's tensors
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16_000_000)  # 64 MB: above glibc's largest automatic mmap threshold (32 MiB)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(code, sum(faults[10:]))
"""


def _page_faults_after_the_mega_command(env_overrides: dict) -> tuple[int, int]:
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items()
           if k not in ("MEGA_REUSE_FREED_MEMORY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS_OF_A_REUSED_TENSOR], env={**env, **env_overrides},
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-2]), int(out[-1])


def test_the_mega_command_keeps_freed_memory_for_the_next_step():
    """glibc gave every large tensor fresh pages (mmap) and the kernel zero-filled each on first
    touch; after the mega command starts, a freed 64 MB block is reused without page faults once
    the loop is steady (the first few are split by the small blocks torch allocates beside it,
    until glibc's per-size cache of those is full: measured, at most 9 iterations).
    MEGA_REUSE_FREED_MEMORY=0 and a user's own MALLOC_* settings keep glibc's behaviour."""
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        import pytest
        pytest.skip("mallopt is glibc's")
    code, reused_faults = _page_faults_after_the_mega_command({})
    assert code == 2  # the command ran (and refused the missing subject)
    pages = 64_000_000 // 4096  # one tensor's
    assert reused_faults < pages // 2  # over the last 20 iterations
    for opt_out in ({"MEGA_REUSE_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        _, fresh_faults = _page_faults_after_the_mega_command(opt_out)
        assert fresh_faults > 10 * pages, opt_out


def test_bad_arguments_are_one_clear_line_naming_what_to_change(tmp_path, capsys):
    """Mistakes a user makes on the command line end with exit code 2 and one line that names the
    option or the file, before any work is done, never a traceback."""
    import torch

    from mega.train.loop import pick_device

    def error_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "--device 'gpu': not a device torch knows" in error_of(
        "export", str(tmp_path), "--head-model", str(tmp_path), "--out", str(tmp_path / "x"), "--device", "gpu")
    if not torch.cuda.is_available():
        assert "torch sees no CUDA GPU on this machine" in error_of(
            "export", str(tmp_path), "--head-model", str(tmp_path), "--out", str(tmp_path / "x"), "--device", "cuda")
    assert pick_device("cpu") == torch.device("cpu")
    assert "9 to 64 cameras" in error_of("synth", str(tmp_path / "s"), "--cameras", "65")
    assert "at least 16 pixels" in error_of("synth", str(tmp_path / "s"), "--width", "0")
    assert not (tmp_path / "s").exists()
    assert "mega figure curves needs --run-dir" in error_of("figure", "curves", "--out", str(tmp_path / "f.png"))
    assert "needs --union and --eval-dir" in error_of("figure", "grid", "--out", str(tmp_path / "f.png"))
    # A folder where a file is wanted (or the reverse): the path and the reason.
    (tmp_path / "a_file").write_text("")
    assert f"{tmp_path / 'a_file'}" in error_of("head-model", "--out", str(tmp_path / "a_file" / "head"))
    with pytest.raises(OSError):  # --verbose keeps the traceback, for a report
        main(["--verbose", "head-model", "--out", str(tmp_path / "a_file" / "head")])


def test_a_checkpoint_of_another_stage_is_named_for_what_it_is(tmp_path):
    import torch

    from mega.errors import DataError
    from mega.train.checkpoint import load_checkpoint

    torch.save({"config": {}, "model": {}, "frames": {}, "iterations": 2}, tmp_path / "face.pt")
    assert load_checkpoint(tmp_path / "face.pt", kind="face")["iterations"] == 2
    with pytest.raises(DataError, match=r"face.pt: expected the joint stage's checkpoint \(joint.pt\), found the "
                                        r"face stage's checkpoint \(face.pt\), without 'face_config'"):
        load_checkpoint(tmp_path / "face.pt", kind="joint")
    with pytest.raises(DataError, match=r"expected the canonical-hair stage's checkpoint \(hair.pt\)"):
        load_checkpoint(tmp_path / "face.pt", kind="hair")


def test_videos_and_the_export_viewer_refuse_what_they_cannot_write_or_show(tmp_path):
    import numpy as np

    from mega.errors import ConfigError, DataError
    from mega.report.videos import write_mp4
    from mega.view.exports import ExportViewer

    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(ConfigError, match="name the file .mp4"):
        write_mp4(frames, tmp_path / "v.gif", 4, (8, 8))
    assert write_mp4(frames, tmp_path / "v.mp4", 4, (8, 8)).stat().st_size > 0
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "face.obj").write_text("v 1 2\n")
    with pytest.raises(DataError, match="face.obj: not a readable OBJ mesh"):
        ExportViewer(tmp_path / "export", port=1)  # refused before any server or port is touched
    (tmp_path / "export" / "face.obj").write_text("")
    with pytest.raises(DataError, match="face.obj: expected a triangle mesh"):
        ExportViewer(tmp_path / "export", port=1)
    # A texture the material names but the folder lacks is reported (the mesh is shown without it).
    from mega.view.exports import missing_textures

    (tmp_path / "export" / "face.obj").write_text("mtllib face.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "export" / "face.mtl").write_text("newmtl skin\nmap_Kd face_diffuse.png\n")
    assert missing_textures(tmp_path / "export" / "face.obj") == [tmp_path / "export" / "face_diffuse.png"]
    (tmp_path / "export" / "face_diffuse.png").write_bytes(b"")
    assert missing_textures(tmp_path / "export" / "face.obj") == []
