"""The mega command's subcommands, as workflow rules call them."""

import json

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
    assert "head_model.flame.model is not set" in capsys.readouterr().err


def test_inspect_subject(tmp_path):
    union = write_fixture_subject(tmp_path / "data", n_sequences=2, n_timesteps=1)
    out = tmp_path / "summary.json"
    assert main(["inspect-subject", str(union), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["splits"]["val"]["cameras"] == [8]
    assert summary["splits"]["test"]["frames"] == 16
    assert summary["splits"]["train"]["image_hw"] == [32, 22]
