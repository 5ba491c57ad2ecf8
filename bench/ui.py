"""Case-page render time in a real browser on the demo cohort (target ≤ 1.5 s).

Signs in as the demo clinician through headless Chromium, then opens the worklist's top cases
one after another (a click on the case in the worklist → the case page fully drawn: X-ray, ECG,
record, report, findings, similar cases, review form) and prints the median and the worst time,
first visits and repeat visits (cached renders) separately. Needs the demo store
(``bash scripts/demo.sh``) and Chromium (``bash scripts/browser.sh``).

    .venv/bin/python -m bench.ui [--home .clinic] [--cases 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.browser import chromium, open_case, sign_in, streamlit_server, wait_for
from bench.browser import worklist_case_ids as top_cases


def measure(home: Path, cases: int) -> dict[str, Any]:
    env = {**os.environ, "CLINIC_HOME": str(home.resolve()), "CLINIC_MODE": "demo"}
    first: list[float] = []
    again: list[float] = []
    with streamlit_server(env) as url, chromium() as driver:
        sign_in(driver, url, "demo-clinician", "demo-clinician-password")
        chosen = top_cases(driver)[:cases]
        for visits in (first, again):
            for case_id in chosen:
                visits.append(open_case(driver, case_id))
                wait_for(driver, ".st-key-case_back button").click()
                top_cases(driver)
    return {
        "cases": len(chosen),
        "first_visit_s": _summary(first),
        "repeat_visit_s": _summary(again),
        "target_s": 1.5,
    }


def _summary(times: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(times), 3), "max": round(max(times), 3)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, default=Path(".clinic"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.home, args.cases)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("first_visit_s", "repeat_visit_s"):
            figures = result[name]
            print(f"{name:16} median {figures['median']:.2f} s  worst {figures['max']:.2f} s "
                  f"({result['cases']} cases; target ≤ {result['target_s']} s)")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
