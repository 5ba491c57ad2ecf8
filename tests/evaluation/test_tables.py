from __future__ import annotations

import math

from clinic.evaluation.tables import markdown_table


def test_markdown_table_formats_floats_and_missing_values() -> None:
    rows: list[dict[str, object]] = [
        {"subset": "xray+ecg", "auroc": 0.87654, "n": 12},
        {"subset": "ecg", "auroc": None, "n": 3},
        {"subset": "a|b", "auroc": math.nan},
    ]
    assert markdown_table(rows, ["subset", "auroc", "n"]).splitlines() == [
        "| subset | auroc | n |",
        "|---|---|---|",
        "| xray+ecg | 0.877 | 12 |",
        "| ecg | – | 3 |",
        "| a\\|b | – | – |",
    ]
