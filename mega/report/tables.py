"""The paper's Table 1 and Table 2 from evaluation outputs (``metrics.json`` of ``mega evaluate``),
beside the paper's reported numbers (``paper_results.yaml``), as CSV and Markdown.

Table 1: per subject the full model's novel-view (val) and novel-expression (test) PSNR, SSIM
and LPIPS, their mean over subjects, and the paper's rows marked ``reported``.
Table 2: per variant on one subject PSNR, SSIM, LPIPS and Geo. MAE (novel view, as the paper's
ablations), the paper's values beside them, and per metric whether the variant is worse than
the full model in our measurement and in the paper's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from mega.atomic import write_text
from mega.errors import DataError

PAPER_FILE = Path(__file__).with_name("paper_results.yaml")
TABLE1_METRICS = {"nv": "val", "ne": "test"}  # column prefix: split
METRICS = ("psnr", "ssim", "lpips")
REGION_METRICS = ("psnr_object", "psnr_face", "psnr_hair")
"""Measured rows only. PSNR under the object mask alone (the paper's protocol also keeps the
*rendered* mask, so hair a method leaves out costs it nothing there; this one counts it), and over
the parsing's face region and hair pixels: where each method wins."""
MEASURED_LABELS = {"mega": "MeGA (this run)", "gaussianavatars": "GaussianAvatars (this run)"}
TABLE2_METRICS = ("psnr", "ssim", "lpips", "geo_mae_mm")
LOWER_IS_BETTER = {"psnr": False, "ssim": False, "lpips": True, "geo_mae_mm": True, "psnr_face": False,
                   "psnr_hair": False, "psnr_object": False}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "geo_mae_mm": 2, "psnr_face": 2, "psnr_hair": 2, "psnr_object": 2}
FULL = "mega"


def paper_results(path: str | Path = PAPER_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def read_metrics(path: str | Path) -> dict:
    """A ``metrics.json`` of ``mega evaluate``, checked for the metrics the tables use."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no evaluation here (run `mega evaluate`, or the rule evaluate, first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    missing = [k for k in (*METRICS, "depth_mae_mm") if k not in metrics]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (expected the output of `mega evaluate`)")
    return metrics


def _number(value) -> float:
    return math.nan if value is None else float(value)


def table1(measured: dict[str, dict[str, dict]], paper: dict | None = None,
           baselines: dict[str, dict[str, dict[str, dict]]] | None = None) -> pd.DataFrame:
    """``measured``: subject → split (val, test) → metrics.json content of MeGA; ``baselines``:
    method (``gaussianavatars``) → the same for a baseline trained on the same subjects. Per
    method one row per subject and their mean (when more than one subject), then the paper's
    rows. Measured rows also hold the PSNR over the parsing's face and hair regions, and for each
    metric column ``<column>_best``: whether the row's method is the best measured one on that
    subject (None when only one method was measured)."""
    paper = paper or paper_results()
    by_method = {FULL: measured, **(baselines or {})}
    rows = []
    for method, subjects in by_method.items():
        label = MEASURED_LABELS.get(method, f"{method} (this run)")
        method_rows = []
        for subject, splits in subjects.items():
            row = {"method": label, "subject": subject, "source": "measured", "_method": method}
            for prefix, split in TABLE1_METRICS.items():
                for metric in (*METRICS, *REGION_METRICS):
                    row[f"{prefix}_{metric}"] = _number(splits[split].get(metric))
            method_rows.append(row)
        if len(method_rows) > 1:
            mean = {"method": label, "subject": "mean", "source": "measured", "_method": method}
            for key in method_rows[0]:
                if key not in mean:
                    mean[key] = sum(r[key] for r in method_rows) / len(method_rows)
            method_rows.append(mean)
        rows += method_rows
    columns = [f"{p}_{m}" for p in TABLE1_METRICS for m in (*METRICS, *REGION_METRICS)]
    if len(by_method) > 1:
        for column in columns:
            lower = LOWER_IS_BETTER[column.split("_", 1)[1]]
            for row in rows:
                rivals = [r[column] for r in rows if r["subject"] == row["subject"] and not math.isnan(r[column])]
                best = (min if lower else max)(rivals) if rivals else math.nan
                row[f"{column}_best"] = None if math.isnan(row[column]) else bool(row[column] == best)
    for row in rows:
        del row["_method"]
    for reported in paper["table1"]["rows"]:
        rows.append({"subject": "mean of 9 (NeRSemble)", "source": "reported", **reported})
    best = [f"{c}_best" for c in columns] if len(by_method) > 1 else []
    return pd.DataFrame(rows, columns=["method", "subject", "source", *columns, *best])


def table2(measured: dict[str, dict], labels: dict[str, str], paper: dict | None = None) -> pd.DataFrame:
    """``measured``: variant → the val split's metrics.json content (``mega`` first). Per metric:
    ours, ours worse than the full model, the paper's, the paper's worse than its full model."""
    if FULL not in measured:
        raise DataError(f"Table 2 needs the full model ('{FULL}') among the variants, got {', '.join(measured)}")
    paper = paper or paper_results()
    reported = paper["table2"]["rows"]
    ours = {v: {**{m: _number(x[m]) for m in METRICS}, "geo_mae_mm": _number(x["depth_mae_mm"])}
            for v, x in measured.items()}
    rows = []
    for variant, values in ours.items():
        row = {"variant": variant, "label": labels.get(variant, variant)}
        for metric in TABLE2_METRICS:
            row[metric] = values[metric]
            row[f"{metric}_worse"] = _worse(metric, values[metric], ours[FULL][metric]) if variant != FULL else None
            theirs = reported.get(variant, {}).get(metric, math.nan)
            row[f"paper_{metric}"] = theirs
            row[f"paper_{metric}_worse"] = (_worse(metric, theirs, reported[FULL][metric])
                                            if variant != FULL and variant in reported else None)
        rows.append(row)
    return pd.DataFrame(rows)


def _worse(metric: str, value: float, full: float) -> bool | None:
    if math.isnan(value) or math.isnan(full):
        return None
    return value > full if LOWER_IS_BETTER[metric] else value < full


def _fmt(value, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table1_markdown(table: pd.DataFrame, paper: dict | None = None) -> str:
    """Table 1 as Markdown; with more than one measured method, the better measured value of each
    column and subject in bold, and the face- and hair-region PSNR of the measured rows."""
    paper = paper or paper_results()
    compared = any(c.endswith("_best") for c in table.columns)
    metrics = (*METRICS, *REGION_METRICS) if compared else METRICS
    names = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "psnr_object": "object PSNR ↑",
             "psnr_face": "face PSNR ↑",
             "psnr_hair": "hair PSNR ↑"}
    header = " | ".join(f"{p.upper()} {names[m]}" for p in TABLE1_METRICS for m in metrics)
    head = f"| Method | Subject | Source | {header} |\n|---|---|---|" + "---:|" * (len(TABLE1_METRICS) * len(metrics)) + "\n"
    lines = []
    for _, r in table.iterrows():
        cells = []
        for p in TABLE1_METRICS:
            for m in metrics:
                cell = _fmt(r.get(f"{p}_{m}"), DIGITS[m])
                cells.append(f"**{cell}**" if compared and _is_true(r.get(f"{p}_{m}_best")) else cell)
        lines.append(f"| {r['method']} | {r['subject']} | {r['source']} | " + " | ".join(cells) + " |")
    compare = (" Bold: the better of the measured methods on that subject (same data, splits, head model and "
               "protocol). Object PSNR: under the object mask alone, so hair a method does not draw counts "
               "against it; face and hair PSNR: over the parsing's face region and hair pixels."
               if compared else "")
    return ("# Table 1: comparison with the state of the art\n\n"
            "NV: novel view (val split); NE: novel expression (test split). Measured rows: this run, the "
            "paper's protocol (render and ground truth masked by object mask × rendered mask, metrics over "
            "the frame)." + compare + " Reported rows: " + paper["table1"]["source"] + ".\n\n" + head +
            "\n".join(lines) + "\n")


def table2_markdown(table: pd.DataFrame, subject: str, paper: dict | None = None) -> str:
    paper = paper or paper_results()
    head = ("| Variant | Name | PSNR ↑ | SSIM ↑ | LPIPS ↓ | Geo. MAE (mm) ↓ | paper PSNR | paper SSIM | paper LPIPS | "
            "paper Geo. MAE |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for _, r in table.iterrows():
        ours = [_fmt(r[m], DIGITS[m]) + _flag(r[f"{m}_worse"]) for m in TABLE2_METRICS]
        theirs = [_fmt(r[f"paper_{m}"], DIGITS[m]) + _flag(r[f"paper_{m}_worse"]) for m in TABLE2_METRICS]
        lines.append(f"| {r['variant']} | {r['label']} | " + " | ".join(ours + theirs) + " |")
    agree = _agreement(table)
    return (f"# Table 2: ablations on subject {subject}\n\n"
            "Novel-view split (val). ▼ marks a value worse than the full model's (row `mega`), in our measurement "
            "and in the paper's. Paper: " + paper["table2"]["source"] + ".\n\n" + head + "\n".join(lines) +
            f"\n\nWorse than the full model where the paper finds it worse: {agree}.\n")


def _is_true(value) -> bool:
    """True for a True flag in any of pandas' representations (bool, numpy bool, object); False
    for False, None and NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)


def _flag(worse) -> str:
    return " ▼" if _is_true(worse) else ""


def _agreement(table: pd.DataFrame) -> str:
    """How many (variant, metric) cells where the paper's variant is worse are worse in ours too."""
    both = total = 0
    for _, r in table.iterrows():
        for m in TABLE2_METRICS:
            if _is_true(r[f"paper_{m}_worse"]):
                total += 1
                both += _is_true(r[f"{m}_worse"])
    return f"{both} of {total} cells"


def write_table(table: pd.DataFrame, markdown: str, csv_path: str | Path) -> tuple[Path, Path]:
    """``csv_path`` and the Markdown beside it (same stem, ``.md``), atomically."""
    csv_path = Path(csv_path)
    md_path = csv_path.with_suffix(".md")
    write_text(csv_path, table.to_csv(index=False, float_format="%.6g"))
    write_text(md_path, markdown)
    return csv_path, md_path
