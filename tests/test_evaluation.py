"""The paper's metrics, the masking protocol, LPIPS from converted weights, the tables and the
ablations file."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mega.ablations import load_ablations
from mega.cli import main
from mega.errors import ConfigError, DataError
from mega.eval.avatar import full_mask
from mega.eval.evaluate import evaluation_mask
from mega.eval.lpips import _ArraysOnly, flax_to_lpips_state, load_lpips
from mega.eval.protocol import PaperMetrics, psnr, ssim
from mega.report import tables

REPO = Path(__file__).resolve().parents[1]
LPIPS_WEIGHTS = REPO / ".cache" / "mega" / "lpips_alex.pth"


def ssim_3dgs(img1, img2, window=11, sigma=1.5):
    """3D Gaussian Splatting's ``ssim`` (the authors' metric), written out with conv2d."""
    g = torch.tensor([math.exp(-(x - window // 2) ** 2 / (2 * sigma ** 2)) for x in range(window)])
    g = (g / g.sum())[:, None]
    w = (g @ g.t())[None, None].expand(img1.shape[1], 1, window, window).contiguous()

    def conv(x):
        return F.conv2d(x, w, padding=window // 2, groups=img1.shape[1])

    mu1, mu2 = conv(img1), conv(img2)
    s1, s2, s12 = conv(img1 * img1) - mu1 ** 2, conv(img2 * img2) - mu2 ** 2, conv(img1 * img2) - mu1 * mu2
    m = ((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4)) / ((mu1 ** 2 + mu2 ** 2 + 1e-4) * (s1 + s2 + 9e-4))
    return m.flatten(1).mean(1)


@pytest.fixture(scope="module")
def lpips_net():
    if not LPIPS_WEIGHTS.is_file():
        pytest.fail(f"{LPIPS_WEIGHTS} is missing: run `make setup` (it makes the LPIPS weights)")
    return load_lpips(LPIPS_WEIGHTS)


# ---- PSNR, SSIM and the protocol

def test_psnr_of_a_known_error():
    target = torch.rand(2, 3, 20, 30)
    pred = target + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)  # a uniform error δ: PSNR = −20·log10 δ
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_ssim_is_the_authors_and_one_for_equal_images():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 40, 30)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ssim(a, b), ssim_3dgs(a, b), atol=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    assert float(ssim(a, b)[0]) < 0.9


def test_masked_protocol_on_a_hand_built_case():
    """Errors outside the mask do not count; inside, the error is averaged over the whole frame."""
    target = torch.full((1, 3, 10, 10), 128 / 255)  # values an 8-bit render can hold
    render = target.clone()
    render[..., :, 5:] = 0.0  # wrong on the right half, which the mask leaves out
    render[..., 0, 0] = 179 / 255  # one wrong pixel inside the mask
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    mask[..., :, :5] = True
    out = PaperMetrics(None)(render, target, mask)
    expected_mse = (51 / 255) ** 2 / 100  # one pixel of 100
    assert math.isclose(float(out["psnr"]), 10 * math.log10(1 / expected_mse), rel_tol=1e-4)
    assert math.isnan(float(out["lpips"]))


def test_evaluation_mask_is_object_times_rendered_mask():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0] = 1   # skin
    labels[0, 1] = 13  # hair
    labels[0, 2] = 14  # hat: not the object
    labels[0, 3] = 18  # cloth: not the object
    face_mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    face_mask[..., :, :2] = True
    hair_weight = torch.zeros(1, 1, 4, 4)
    hair_weight[..., 1, :] = 0.5  # translucent hair over the whole row 1
    out = {"face": {"mask": face_mask}, "hair_weight": hair_weight}
    mask = evaluation_mask({"parsing": labels}, {"full_mask": full_mask(out)})
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, .5, .5], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    # Row 1, columns 0-1: mesh 1 − 0.5 clipped + 0.5 = 1 (the authors' full mask).
    assert torch.equal(mask[0, 0], expected)


# ---- LPIPS

def test_lpips_is_zero_for_equal_images_and_grows_with_noise(lpips_net):
    torch.manual_seed(1)
    image = F.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bilinear")
    values = [float(lpips_net(image, (image + s * torch.randn_like(image)).clamp(0, 1), normalize=True))
              for s in (0.0, 0.05, 0.1, 0.2)]
    assert values[0] == 0.0
    assert values[1] < values[2] < values[3]


def test_lpips_agrees_with_the_package_network_loaded_with_the_same_weights(lpips_net):
    import lpips

    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()  # its own heads
    state = torch.load(LPIPS_WEIGHTS, weights_only=True)["state"]
    reference.net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    torch.manual_seed(2)
    a, b = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)
    assert torch.allclose(lpips_net(a, b, normalize=True), reference(a, b, normalize=True), atol=1e-6)


def test_flax_kernels_become_torch_kernels():
    """HWIO → OIHW: the converted first convolution gives what the Flax kernel gives."""
    rng = np.random.default_rng(0)
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": rng.normal(size=shape).astype(np.float32),
                                         "bias": rng.normal(size=shape[-1]).astype(np.float32)}
                          for i, shape in enumerate([(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384),
                                                     (3, 3, 384, 256), (3, 3, 256, 256)])}}
    tree.update({f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.ones((1, 1, c, 1), np.float32)}}
                 for i, c in enumerate((64, 192, 384, 256, 256))})
    state = flax_to_lpips_state(tree)
    patch = rng.normal(size=(11, 11, 3)).astype(np.float32)
    flax_out = np.einsum("hwi,hwio->o", patch, tree["AlexNet_0"]["Conv_0"]["kernel"]) + tree["AlexNet_0"]["Conv_0"]["bias"]
    torch_out = F.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None], state["net.slice1.0.weight"],
                         state["net.slice1.0.bias"])[0, :, 0, 0]
    assert np.allclose(torch_out.numpy(), flax_out, atol=1e-4)
    assert state["lin2.model.1.weight"].shape == (1, 384, 1, 1)


def test_lpips_weights_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="mega lpips-weights"):
        load_lpips(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="mega lpips-weights"):
        load_lpips(tmp_path / "bad.pth")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _ArraysOnly(io.BytesIO(pickle.dumps({"a": io.BytesIO()}))).load()


# ---- tables

def metrics_file(path: Path, psnr_value: float, ssim_value=0.95, lpips_value=0.05, mae=2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"psnr": psnr_value, "ssim": ssim_value, "lpips": lpips_value, "depth_mae_mm": mae}))
    return path


def test_table1_from_hand_written_metric_files(tmp_path):
    for subject, base in (("a", 30.0), ("b", 32.0)):
        metrics_file(tmp_path / subject / "mega" / "val" / "metrics.json", base)
        metrics_file(tmp_path / subject / "mega" / "test" / "metrics.json", base - 1)
    out = tmp_path / "tables" / "table1.csv"
    assert main(["tables", "table1", "--eval-dir", str(tmp_path), "--subjects", "a", "b", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["method", "subject", "source", "nv_psnr", "nv_ssim", "nv_lpips", "nv_psnr_object",
                                   "nv_psnr_face", "nv_psnr_hair", "ne_psnr", "ne_ssim", "ne_lpips", "ne_psnr_object",
                                   "ne_psnr_face", "ne_psnr_hair"]
    measured = table[table["source"] == "measured"].set_index("subject")
    assert measured.loc["mean", "nv_psnr"] == pytest.approx(31.0) and measured.loc["b", "ne_psnr"] == 31.0
    reported = table[table["source"] == "reported"].set_index("method")
    assert reported.loc["MeGA", "nv_psnr"] == 34.11 and reported.loc["GaussianAvatars", "ne_lpips"] == 0.060
    assert len(reported) == 5 and "| MeGA | mean of 9" in out.with_suffix(".md").read_text()
    assert main(["tables", "table1", "--eval-dir", str(tmp_path), "--subjects", "c", "--out", str(out)]) == 2


def test_table1_with_a_measured_baseline_marks_the_better_method_per_column(tmp_path):
    for subject, base in (("a", 30.0), ("b", 32.0)):
        for split, shift in (("val", 0.0), ("test", -1.0)):
            mega = metrics_file(tmp_path / subject / "mega" / split / "metrics.json", base + shift, 0.95, 0.05)
            baseline = metrics_file(tmp_path / subject / "gaussianavatars" / split / "metrics.json",
                                    base + shift + (0.5 if subject == "a" else -0.5), 0.96, 0.06)
            # The baseline leaves hair out: better under the paper's mask, worse under the object's.
            for path, obj, face, hair in ((mega, 24.0, 25.0, 18.0), (baseline, 21.0, 26.0, 15.0)):
                values = json.loads(path.read_text())
                path.write_text(json.dumps({**values, "psnr_object": obj, "psnr_face": face, "psnr_hair": hair,
                                            "hair_iou": None}))
    out = tmp_path / "table1.csv"
    assert main(["tables", "table1", "--eval-dir", str(tmp_path), "--subjects", "a", "b", "--baselines",
                 "gaussianavatars", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    measured = table[table["source"] == "measured"].set_index(["method", "subject"])
    ga, ours = "GaussianAvatars (this run)", "MeGA (this run)"
    assert measured.loc[(ga, "a"), "nv_psnr"] == 30.5 and measured.loc[(ga, "mean"), "ne_psnr"] == pytest.approx(30.0)
    # PSNR: the baseline wins on a, MeGA on b, a tie in the mean; SSIM the baseline, LPIPS MeGA.
    assert bool(measured.loc[(ga, "a"), "nv_psnr_best"]) and not bool(measured.loc[(ours, "a"), "nv_psnr_best"])
    assert bool(measured.loc[(ours, "b"), "ne_psnr_best"]) and not bool(measured.loc[(ga, "b"), "ne_psnr_best"])
    assert bool(measured.loc[(ga, "mean"), "nv_psnr_best"]) and bool(measured.loc[(ours, "mean"), "nv_psnr_best"])
    assert bool(measured.loc[(ga, "b"), "nv_ssim_best"]) and bool(measured.loc[(ours, "b"), "nv_lpips_best"])
    assert bool(measured.loc[(ga, "a"), "nv_psnr_face_best"]) and bool(measured.loc[(ours, "a"), "nv_psnr_hair_best"])
    assert bool(measured.loc[(ours, "a"), "nv_psnr_object_best"]) and not bool(measured.loc[(ga, "a"), "ne_psnr_object_best"])
    markdown = out.with_suffix(".md").read_text()
    assert "| GaussianAvatars (this run) | a | measured | **30.50** |" in markdown and "hair PSNR" in markdown
    assert "NV object PSNR ↑" in markdown and "**24.00**" in markdown
    with pytest.raises(SystemExit):  # argparse names the known baselines
        main(["tables", "table1", "--eval-dir", str(tmp_path), "--subjects", "a", "--baselines", "nope", "--out",
              str(out)])


def test_table2_marks_the_variants_worse_than_the_full_model(tmp_path):
    metrics_file(tmp_path / "s" / "mega" / "val" / "metrics.json", 30.0, 0.95, 0.05, 2.0)
    metrics_file(tmp_path / "s" / "nodisp" / "val" / "metrics.json", 29.0, 0.96, 0.06, 2.0)
    out = tmp_path / "table2.csv"
    args = ["tables", "table2", "--eval-dir", str(tmp_path), "--subjects", "s", "--ablations",
            str(REPO / "config" / "ablations.yaml"), "--out", str(out)]
    assert main([*args, "--variants", "mega", "nodisp"]) == 0
    row = pd.read_csv(out).set_index("variant").loc["nodisp"]
    assert row["psnr_worse"] and not row["ssim_worse"] and row["lpips_worse"] and not row["geo_mae_mm_worse"]
    assert row["paper_psnr"] == 32.99 and row["paper_geo_mae_mm_worse"] and row["label"] == "MeGA-nodisp"
    markdown = out.with_suffix(".md").read_text()
    assert "29.00 ▼" in markdown and "0.960 |" in markdown
    assert "2 of 4 cells" in markdown  # the paper finds nodisp worse in all four; we in PSNR and LPIPS
    assert main([*args, "--variants", "mega", "nohair"]) == 2
    assert main([*args, "--variants", "nodisp"]) == 2  # no full model to compare with


def test_metric_files_are_checked(tmp_path):
    with pytest.raises(DataError, match="no evaluation here"):
        tables.read_metrics(tmp_path / "missing.json")
    (tmp_path / "m.json").write_text('{"psnr": 30}')
    with pytest.raises(DataError, match="missing ssim, lpips, depth_mae_mm"):
        tables.read_metrics(tmp_path / "m.json")


# ---- the ablations file

def test_the_ablations_file_defines_table2(tmp_path):
    ablations = load_ablations(REPO / "config" / "ablations.yaml")
    assert list(ablations) == ["mega", "noview", "nodyn", "nosubdiv", "nodisp", "gsdepth", "allgs"]
    assert ablations["nodisp"].face == {"displacement": False} and not ablations["nodisp"].shares_full_face
    assert ablations["allgs"].shares_full_face and math.isinf(ablations["allgs"].hair["early_stop_gap_mm"])
    assert ablations["gsdepth"].hair == {"occlusion_depth": "alpha_depth"}


@pytest.mark.parametrize("text, message", [
    ("nosh: {face: {sh_degre: 2}}", "variant 'nosh', face: unknown setting 'sh_degre'"),
    ("nosh: {hair: {sh_degree: high}}", "'sh_degree' = 'high' should be an integer"),
    ("nosh: {colour: red}", "expected a mapping with keys among"),
    ("No-SH: {}", "names are lower-case"),
    ("mega: {face: {tex_size: 64}}", "the full model has no overrides"),
    ("nosh: {group: hair}", "'group' must be one of"),
    ("- a\n- b", "expected a mapping of variant names"),
])
def test_a_malformed_ablations_file_is_named(tmp_path, text, message):
    path = tmp_path / "ablations.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_ablations(path)
    assert str(path) in str(error.value)


def test_a_new_ablation_needs_no_code(tmp_path):
    path = tmp_path / "ablations.yaml"
    path.write_text("nosh: {label: MeGA-noSH, hair: {sh_degree: 0}}\n")
    ablations = load_ablations(path)
    assert ablations["nosh"].hair == {"sh_degree": 0} and ablations["nosh"].shares_full_face
    assert "mega" in ablations  # the full model is always there
