"""Ingestion throughput against the raw cost of the same files, measured in the same run.

Raw cost = what any reader must pay: for DICOM, read + sha256 + pydicom decode of the pixel data;
for ECG, read + sha256 + ``wfdb.rdrecord``, in this process. Ingestion = the full engine as
``clinic ingest`` runs it by default (one supervised decoding process: decode, LUT/window,
resampling, quality checks, de-identification, blob writes; database rows in this process), so
the ratio is per-core work, not parallelism; it includes starting the decoding process (about
0.5 s a run). Each figure is the best of ``--repeat`` runs.

    .venv/bin/python -m bench.ingest [--patients 120] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import wfdb

from clinic.ingest.engine import IngestOptions, ingest
from clinic.ingest.types import IngestItem, ItemKind
from clinic.settings import RunMode, Settings
from clinic.store.store import Store
from clinic.synth import synthesize_cohort


def raw_dicom(path: Path) -> None:
    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point


def raw_wfdb(path: Path) -> None:
    for file in sorted(path.parent.glob(path.stem + ".*")):
        hashlib.sha256(file.read_bytes()).hexdigest()
    wfdb.rdrecord(str(path.with_suffix("")))


def read_all(raw: Callable[[Path], None], files: list[Path]) -> int:
    for path in files:
        raw(path)
    return len(files)


def best_time(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def ingest_time(files: list[Path], kind: ItemKind, work: Path, repeat: int) -> float:
    """Best wall time to ingest ``files`` into a fresh SQLite store (schema created beforehand)."""
    times = []
    for attempt in range(repeat):
        home = work / f"{kind.value}-{attempt}"
        settings = Settings(
            home=home,
            database_url=f"sqlite:///{home / 'clinic.db'}",
            raw_pseudonym_key="bench-key-0123456789",
            mode=RunMode.TEST,
        )
        store = Store.open(settings)
        items = [
            IngestItem(kind=kind, source=str(p), path=p, patient_key=p.stem, encounter_key="1")
            for p in files
        ]
        start = time.perf_counter()
        summary = ingest(store, items, IngestOptions(workers=1))
        times.append(time.perf_counter() - start)
        store.close()
        if summary.ingested != len(files):
            raise RuntimeError(f"benchmark input refused: {summary}")
    return min(times)


def measure(
    files: list[Path], kind: ItemKind, raw: Callable[[Path], None], work: Path, repeat: int
) -> dict[str, float]:
    raw_seconds = best_time(lambda: read_all(raw, files), repeat)
    ingest_seconds = ingest_time(files, kind, work, repeat)
    return {
        "files": len(files),
        "files_per_s": round(len(files) / ingest_seconds, 2),
        "raw_files_per_s": round(len(files) / raw_seconds, 2),
        "ratio": round(ingest_seconds / raw_seconds, 3),
    }


def full_size_radiographs(work: Path, repeat: int) -> dict[str, dict[str, float]]:
    """The real chest CR of pydicom-data (2 k × 2.5 k, uncompressed and JPEG 2000), if installed.

    Phantom radiographs are small (384-1024 px), so their figure is dominated by per-file
    overhead; this one shows the ratio at clinical image sizes.
    """
    from pydicom.data import get_testdata_file

    sources = [get_testdata_file(name) for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm")]
    if not all(sources):
        return {}
    folder = work / "full-size"
    folder.mkdir()
    files = []
    for index, source in enumerate(sources):
        for copy in range(4):  # distinct bytes (the same bytes would be "already stored")
            dataset = pydicom.dcmread(str(source))
            dataset.PatientID = f"BENCH{index}{copy}"
            target = folder / f"cr{index}-{copy}.dcm"
            dataset.save_as(target)
            files.append(target)
    return {"dicom_full_size": measure(files, ItemKind.XRAY, raw_dicom, work, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clinic-bench-") as folder:
        work = Path(folder)
        synthesize_cohort(work / "cohort", patients=args.patients, seed=1)
        dicoms = sorted((work / "cohort" / "xray").glob("*.dcm"))
        ecgs = sorted((work / "cohort" / "ecg").glob("*.hea"))
        results = {
            "dicom": measure(dicoms, ItemKind.XRAY, raw_dicom, work, args.repeat),
            "ecg": measure(ecgs, ItemKind.ECG, raw_wfdb, work, args.repeat),
            **full_size_radiographs(work, args.repeat),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    if args.json:
        print(json.dumps(results))
        return
    for name in ("dicom", "dicom_full_size", "ecg"):
        if name not in results:
            continue
        r = results[name]
        assert isinstance(r, dict)
        print(
            f"{name:15} {r['files']:4} files  ingest {r['files_per_s']:8.1f}/s  "
            f"raw {r['raw_files_per_s']:8.1f}/s  ingest/raw time ratio {r['ratio']:.2f}"
        )
    print(f"peak RSS {results['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
