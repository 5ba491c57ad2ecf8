"""The IU benchmark: which reports and labels it uses, which weights each method trains, and a
tiny end-to-end run on a handful of report rows with a random tiny text encoder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from clinic.benchmarks import iu
from clinic.benchmarks.iu import (
    IuOptions,
    MethodRun,
    build_model,
    run_iu_benchmark,
    split_reports,
    summarise,
    text_unit,
    top_labels,
)
from clinic.cli.main import app
from clinic.data.cases import Case
from clinic.data.dataset import PreprocessConfig
from clinic.models.cache import FrozenFeatureCache
from clinic.models.config import ModelConfig
from tests.conftest import cli_env, make_settings
from tests.modelkit import tiny_config


def report_case(index: int, labels: dict[str, float], text: str | None = None) -> Case:
    report = text if text is not None else f"FINDINGS: report number {index}."
    return Case(f"c{index}", f"p{index}", None, report=report or None, labels=labels)


def options(**values: Any) -> IuOptions:
    return IuOptions(reports_dir=Path("unused"), **values)


# --- split and labels --------------------------------------------------------------------------


def test_split_leaves_out_uncoded_and_empty_reports_and_fills_negatives() -> None:
    cases = [report_case(i, {"normal": 1.0} if i % 2 else {"Lung": 1.0}) for i in range(60)]
    cases += [report_case(100, {}), report_case(101, {"normal": 1.0}, text="")]
    split = split_reports(cases, options(n_labels=2, test_fraction=0.3))
    kept = {c.case_id for c in split.train + split.test}
    assert "c100" not in kept and "c101" not in kept
    assert (split.left_out_not_coded, split.left_out_without_text) == (1, 1)
    assert set(split.label_names) == {"normal", "Lung"}
    for case in split.train + split.test:
        assert set(case.labels) == {"normal", "Lung"}
        assert sorted(case.labels.values()) == [0.0, 1.0]  # the unlisted problem is a negative
    assert cases[0].labels == {"Lung": 1.0}, "the caller's cases must not be modified"


def test_split_is_by_text_so_identical_reports_stay_on_one_side() -> None:
    cases = [report_case(i, {"normal": 1.0}, text=f"text {i % 10}") for i in range(100)]
    split = split_reports(cases, options(test_fraction=0.5))
    assert {c.report for c in split.train}.isdisjoint({c.report for c in split.test})
    assert all(text_unit(c) < 0.5 for c in split.test)
    assert split.train and split.test


def test_training_subset_is_capped_and_labels_come_from_it() -> None:
    cases = [report_case(i, {"common": 1.0, f"rare{i}": 1.0}) for i in range(80)]
    split = split_reports(cases, options(max_train=10, n_labels=1, test_fraction=0.2))
    assert len(split.train) == 10
    assert split.training_pool == 80 - len(split.test) > 10
    assert split.label_names == ("common",)


def test_top_labels_counts_positives_and_breaks_ties_by_name() -> None:
    cases = [
        report_case(0, {"b": 1.0, "a": 1.0, "c": 1.0}),
        report_case(1, {"c": 1.0, "b": 1.0, "a": 0.0}),
    ]
    assert top_labels(cases, 2) == ("b", "c")
    assert top_labels(cases, 5) == ("b", "c", "a")


def test_split_without_test_reports_is_an_error() -> None:
    with pytest.raises(ValueError, match="need coded reports"):
        split_reports([report_case(0, {"normal": 1.0})], options(test_fraction=0.0))


def test_summary_leaves_a_label_without_test_positives_out_of_the_macro() -> None:
    labels = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # "b": no positives
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2], [0.1, 0.4]])
    run = MethodRun(scores, trainable_parameters=3, total_parameters=5, train_seconds=1.0,
                    predict_seconds=0.5)  # fmt: skip
    summary = summarise([run, run], labels, ("a", "b"), epochs=2)
    assert summary["macro_auroc"] == 1.0 and summary["std"] == 0.0
    assert summary["per_label"]["a"] == 1.0 and math.isnan(summary["per_label"]["b"])
    assert summary["trainable_parameters"] == 3 and summary["epochs"] == 2


# --- which weights each method trains ------------------------------------------------------------


def trainable(method: iu.Method, config: ModelConfig) -> dict[str, bool]:
    model = build_model(method, config, PreprocessConfig(), ("a", "b"), FrozenFeatureCache())
    return {name: p.requires_grad for name, p in model.named_parameters()}


def test_frozen_trains_only_projection_and_head() -> None:
    flags = trainable("frozen", tiny_config())
    assert not any(on for name, on in flags.items() if ".base." in name)
    assert flags["encoders.report.projection.out.weight"] and flags["fusion.head.weight"]
    assert not any(on for name, on in flags.items() if name.startswith("logit_scale"))


def test_lora_trains_only_adapters_and_head() -> None:
    flags = trainable("lora", tiny_config())
    encoder = {name: on for name, on in flags.items() if name.startswith("encoders.")}
    assert any(encoder.values())
    assert all(("lora_" in name) == on for name, on in encoder.items())
    assert flags["fusion.head.weight"]
    assert not any(on for name, on in flags.items() if name.startswith("fusion.reconstruct"))


def test_full_fine_tuning_trains_the_base() -> None:
    flags = trainable("full", tiny_config())
    base = [on for name, on in flags.items() if ".base." in name]
    assert base and all(base)


# --- end to end on a few rows ------------------------------------------------------------------


def write_iu_folder(folder: Path, rows: int = 36) -> Path:
    """``indiana_reports.csv`` in the source's columns: two findings, one uncoded study."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
               "impression"]  # fmt: skip
    with (folder / "indiana_reports.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for uid in range(1, rows + 1):
            problems = ["normal"] if uid % 3 == 0 else ["Cardiomegaly"]
            if uid % 2 == 0:
                problems.append("Opacity")
            if uid == rows:
                problems = ["No Indexing"]
            writer.writerow({
                "uid": uid, "MeSH": ";".join(problems), "Problems": ";".join(problems),
                "image": "Chest, 2 views", "indication": f"cough {uid}", "comparison": "None.",
                "findings": f"{' and '.join(problems)} seen in study {uid}.",
                "impression": "See findings.",
            })  # fmt: skip
    return folder


def test_tiny_end_to_end_run_reports_every_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iu, "load_model_config", lambda _name: tiny_config())
    folder = write_iu_folder(tmp_path / "iu")
    result = run_iu_benchmark(
        IuOptions(folder, max_train=20, epochs=1, head_epochs=2, n_labels=3, max_length=32,
                  test_fraction=0.3, batch_size=8, workers=1, home=tmp_path / "home")
    )  # fmt: skip
    assert set(result["labels"]) == {"normal", "Cardiomegaly", "Opacity"}
    assert result["protocol"]["left_out_not_coded"] == 1
    assert "negative" in result["protocol"]["labels"] and "Open-i" in result["protocol"]["source"]
    assert result["split"]["train"] == 20 and result["n"] == 20 + result["split"]["test"]
    methods = result["methods"]
    json.dumps(result, allow_nan=False)  # strict JSON: an undefined AUROC is null
    assert set(methods) == {"frozen", "lora", "full"}
    for summary in methods.values():
        assert 0.0 <= summary["macro_auroc"] <= 1.0 and summary["std"] == 0.0
        assert set(summary["per_label"]) == set(result["labels"])
    counts = [methods[m]["trainable_parameters"] for m in ("frozen", "lora", "full")]
    assert counts[0] < counts[2] and counts[1] < counts[2]
    assert methods["frozen"]["epochs"] == 2 and methods["full"]["epochs"] == 1


def test_cli_refuses_a_folder_without_iu_reports(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'clinic.db'}")
    result = CliRunner().invoke(
        app, ["run", "iu-benchmark", "--reports", str(tmp_path), "--json"], env=cli_env(settings)
    )
    assert result.exit_code == 2, result.output
    assert "not an IU folder" in result.stderr and "indiana_reports.csv" in result.stderr
