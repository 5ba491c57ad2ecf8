"""A phantom cohort in real formats: DICOM radiographs and ECGs, WFDB, CSV records, reports.

``synthesize_cohort(out, patients=500, seed=7)`` writes a cohort whose latent conditions
(heart failure, AF, MI, pneumonia, pleural effusion, LVH) leave partial, noisy evidence across
modalities, with missing modalities, noisy labels and imperfect reports; ``latent.jsonl`` keeps
the truth so an oracle ceiling can be computed. The same seed gives byte-identical files.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clinic.synth.conditions import CONDITIONS, LABELS, SynthConfig
from clinic.synth.identity import draw_encounter_numbers, draw_patient_ids
from clinic.synth.writer import PatientOutput, PatientTask, make_dirs, write_patient, write_tables

__all__ = ["CONDITIONS", "LABELS", "SynthConfig", "SynthSummary", "synthesize_cohort"]


@dataclass(frozen=True)
class SynthSummary:
    """What was written: counts per modality / format and the paths of the cohort tables."""

    out: Path
    patients: int
    encounters: int
    counts: dict[str, int]  # xray, ecg, report, record: files (record: rows) written
    formats: dict[str, int]  # e.g. xray_rle, ecg_dicom, report_radiology_latin-1
    manifest: Path
    labels: Path
    records: Path
    latent: Path


def _tasks(out: Path, patients: int, seed: int, config: SynthConfig) -> list[PatientTask]:
    """One task per patient; child seeds come from ``SeedSequence(seed).spawn``."""
    cohort_seq, *patient_seqs = np.random.SeedSequence(seed).spawn(patients + 1)
    rng = np.random.default_rng(cohort_seq)
    ids = draw_patient_ids(rng, patients)
    numbers = draw_encounter_numbers(rng, 2 * patients)
    return [
        PatientTask(
            out, seed, i, ids[i], (numbers[2 * i], numbers[2 * i + 1]), patient_seqs[i], config
        )
        for i in range(patients)
    ]


def _run(tasks: list[PatientTask], workers: int) -> Iterator[PatientOutput]:
    """Write patients inline or in a spawn pool; results come back in task order either way."""
    if workers <= 1 or len(tasks) < 2 * workers:
        yield from map(write_patient, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(write_patient, tasks, chunksize=4)


def _summarise(results: list[PatientOutput]) -> tuple[dict[str, int], dict[str, int]]:
    """Counts per modality (from manifest rows) and per storage format (from the latent rows)."""
    counts = Counter(row["kind"] for p in results for row in p.manifest)
    counts["record"] = sum(len(p.records) for p in results)
    formats: Counter[str] = Counter()
    for p in results:
        for latent in p.latent:
            files = latent["files"]
            if "xray" in files:
                formats[f"xray_{files['xray']['compression']}"] += 1
                formats[
                    "xray_monochrome1" if files["xray"]["monochrome1"] else "xray_monochrome2"
                ] += 1
            if "ecg" in files:
                formats[f"ecg_{files['ecg']['format']}"] += 1
            for kind, info in files["reports"].items():
                formats[f"report_{kind}_{info['encoding']}"] += 1
    counts_out = {k: counts.get(k, 0) for k in ("xray", "ecg", "report", "record")}
    return counts_out, dict(sorted(formats.items()))


def synthesize_cohort(
    out: Path,
    *,
    patients: int,
    seed: int,
    workers: int = 2,
    config: SynthConfig | None = None,
) -> SynthSummary:
    """Write a synthetic cohort of ``patients`` under ``out`` (see :mod:`clinic.synth.writer`).

    Deterministic by ``seed`` whatever ``workers`` is: each patient draws from its own child
    seed and the tables are assembled in patient order.
    """
    if patients < 1:
        raise ValueError("patients must be >= 1")
    out = Path(out)
    make_dirs(out)
    results = list(_run(_tasks(out, patients, seed, config or SynthConfig()), workers))
    paths = write_tables(out, results)
    counts, formats = _summarise(results)
    return SynthSummary(
        out=out,
        patients=patients,
        encounters=sum(len(p.latent) for p in results),
        counts=counts,
        formats=formats,
        manifest=paths["manifest.csv"],
        labels=paths["labels.csv"],
        records=paths["records.csv"],
        latent=paths["latent.jsonl"],
    )
