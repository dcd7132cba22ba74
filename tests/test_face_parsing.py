"""Face parsing with facexlib's networks: the real loading path with weights the test saves,
crops pasted back at full resolution, BiSeNet's labels remapped, resumable output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mega.cli import main
from mega.data.face_parsing import (BISENET_TO_CELEBAMASK, build_parser, crop_box, cut, load_parser, parse_crops,
                                    paste)
from mega.errors import ConfigError, DataError


class OneHot(torch.nn.Module):
    """A stand-in network whose logits are one-hot of given labels (facexlib's output tuple)."""

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.labels = labels

    def forward(self, x):
        return (F.one_hot(self.labels, 19).permute(0, 3, 1, 2).float(),)



@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic subject (its parsing in CelebAMask-HQ order), 9 cameras, 2 sequences × 1 frame."""
    out = tmp_path_factory.mktemp("parsing") / "synthetic"
    assert main(["synth", str(out), "--width", "40", "--height", "56", "--sequences", "2", "--frames", "1",
                 "--cameras", "9", "--quiet"]) == 0
    return out / json.loads((out / "summary.json").read_text())["union"]


def test_bisenet_labels_are_remapped_to_celebamask_order(synthetic):
    """The synthetic parsing (CelebAMask-HQ order) written in BiSeNet's order comes back unchanged."""
    labels = np.array(Image.open(next(synthetic.parent.glob("*/parsing/*_08_labels.png"))))
    assert len(np.unique(labels)) >= 8  # skin, brows, eyes, nose, lips, hair, ...
    labels[0, :19] = np.arange(19)  # and every label at least once
    to_bisenet = np.argsort(BISENET_TO_CELEBAMASK)  # the inverse permutation
    assert sorted(BISENET_TO_CELEBAMASK.tolist()) == list(range(19))
    bisenet_labels = torch.from_numpy(to_bisenet[labels].astype(np.int64))[None]
    out = parse_crops(OneHot(bisenet_labels), "bisenet", torch.rand(1, 3, *labels.shape))
    assert np.array_equal(out[0].numpy(), labels)
    assert BISENET_TO_CELEBAMASK[17] == 13 and BISENET_TO_CELEBAMASK[9] == 15  # hair, earring


def test_crops_are_pasted_back_where_they_came_from():
    image = np.arange(30 * 20 * 3, dtype=np.int64).reshape(30, 20, 3) % 251
    mask = np.zeros((30, 20), np.uint8)
    mask[2:12, 14:20] = 255  # at the right edge: the crop reaches outside the frame
    box = crop_box(mask)
    crop = cut(image.astype(np.uint8), box)
    assert crop.shape[:2] == (box[2], box[2]) and box[1] + box[2] > 20
    back = paste(crop[..., 0], box, (30, 20))
    top, left, side = box
    inside = np.zeros((30, 20), bool)
    inside[max(top, 0):top + side, max(left, 0):left + side] = True
    assert np.array_equal(back[inside], image[..., 0].astype(np.uint8)[inside]) and (back[~inside] == 0).all()


def test_parse_faces_with_saved_weights_writes_every_image_and_resumes(synthetic, tmp_path):
    union = synthetic
    weights = tmp_path / "parsing_bisenet.pth"
    torch.manual_seed(0)
    torch.save(build_parser("bisenet").state_dict(), weights)
    args = ["parse-faces", str(union), "--out", str(tmp_path / "parsing"), "--model", "bisenet", "--weights",
            str(weights), "--batch-size", "4", "--quiet"]
    assert main(args) == 0
    files = sorted((tmp_path / "parsing").rglob("*_labels.png"))
    assert len(files) == 18
    labels = np.array(Image.open(files[0]))
    assert labels.shape == (56, 40) and labels.dtype == np.uint8 and labels.max() <= 18
    files[3].unlink()
    stamp = files[0].stat().st_mtime_ns
    assert main(args) == 0
    assert files[3].is_file() and files[0].stat().st_mtime_ns == stamp  # only the missing one again


def test_parser_weights_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="parsing_bisenet.pth of facexlib's GitHub release"):
        load_parser("bisenet", tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(DataError, match=r"wrong\.pth: not bisenet weights"):
        load_parser("bisenet", wrong)
    with pytest.raises(ConfigError, match="expected bisenet or parsenet"):
        build_parser("segformer")
