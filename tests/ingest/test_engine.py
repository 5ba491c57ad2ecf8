"""The ingestion engine on real files, on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file
from sqlalchemy import func, inspect, select

from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.engine import IngestOptions, ingest
from clinic.ingest.pseudonym import Pseudonymizer
from clinic.ingest.types import IngestItem, ItemKind
from clinic.store.models import (
    AuditEvent,
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    QuarantineItem,
    Report,
    XrayImage,
)
from clinic.store.store import Store
from tests.conftest import TEST_KEY
from tests.ingest.helpers import copy_ptbxl_records, modality_counts, referenced_blobs

INJECTION_ID = "1'; DROP TABLE patients;--"


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


def write_mixed_folder(folder: Path, shared_data: Path) -> None:
    """Real files of every modality, linked by a manifest."""
    folder.mkdir(parents=True)
    headers = copy_ptbxl_records(shared_data, folder / "ecg", 2)
    shutil.copy(pydicom_file("waveform_ecg.dcm"), folder / "ecg" / "waveform.dcm")
    png = sorted((shared_data / "hannover-cxr" / "png").rglob("*.png"))[0]
    shutil.copy(png, folder / "chest.png")
    report = (
        "INDICATION: Dyspnoe.\nFINDINGS: Herz normal groß. Kein Erguss.\nIMPRESSION: Unauffällig."
    )
    (folder / "report.txt").write_bytes(report.encode("latin-1"))
    (folder / "records.csv").write_text(
        "patient_id,encounter_id,age_years,sex,spo2_percent,smoker\n"
        f'A,1,64,female,97,yes\nB,1,250,male,n/a,no\n"{INJECTION_ID}",1,50,male,95,no\n'
    )
    (folder / "labels.csv").write_text(
        "patient_id,encounter_id,label,value,state,uncertainty,source,vocabulary\n"
        "A,1,heart_failure,1,positive,,ground_truth,synth\n"
        "A,1,pneumonia,0,negative,,ground_truth,synth\n"
    )
    rows = [
        f"A,1,ecg,ecg/{headers[0].name},",
        f"B,1,ecg,ecg/{headers[1].name},",
        "A,1,ecg,ecg/waveform.dcm,",
        "A,1,xray,chest.png,",
        "A,1,report,report.txt,radiology",
        ",,record,records.csv,",
        ",,labels,labels.csv,",
    ]
    (folder / "manifest.csv").write_text(
        "patient_id,encounter_id,kind,path,report_kind\n" + "\n".join(rows) + "\n"
    )


def test_mixed_folder_is_ingested_linked_and_idempotent(
    store: Store, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    write_mixed_folder(folder, shared_data)
    items = list(iter_items_from_paths([folder]))
    first = ingest(store, items, IngestOptions(cohort="mixed"))
    assert first.quarantined_by_reason == {}
    assert first.as_json() == {"seen": 9, "ingested": 9, "already_stored": 0, "quarantined": 0}
    assert modality_counts(store) == {
        "xray_images": 1,
        "ecg_records": 3,
        "clinical_records": 3,
        "reports": 1,
    }
    again = ingest(store, list(iter_items_from_paths([folder])), IngestOptions(cohort="mixed"))
    assert again.as_json() == {"seen": 9, "ingested": 0, "already_stored": 9, "quarantined": 0}
    assert modality_counts(store)["ecg_records"] == 3
    pseudonyms = Pseudonymizer(TEST_KEY.encode())
    with store.session() as session:
        patients = set(session.scalars(select(Patient.pseudonym)))
        assert patients == {pseudonyms.patient(p) for p in ("A", "B", INJECTION_ID)}
        patient_a = session.scalar(
            select(Patient).where(Patient.pseudonym == pseudonyms.patient("A"))
        )
        assert patient_a is not None
        encounter_a = session.scalar(
            select(Encounter).where(Encounter.pseudonym == pseudonyms.encounter("A", "1"))
        )
        assert encounter_a is not None and encounter_a.patient_id == patient_a.id
        xray = session.scalar(select(XrayImage))
        assert xray is not None and xray.encounter_id == encounter_a.id
        labels = session.execute(select(Label.name, Label.value, Label.state)).all()
        assert sorted(labels) == [
            ("heart_failure", 1.0, "positive"),
            ("pneumonia", 0.0, "negative"),
        ]
        report = session.scalar(select(Report))
        assert report is not None and report.kind == "radiology"
        assert "groß" in report.text and report.sections["impression"].startswith("Unauffällig")
        records = {r.age_years: r for r in session.scalars(select(ClinicalRecord))}
        assert records[64.0].extras.get("smoker") in {"yes", True}
        out_of_range = [r for r in records.values() if r.age_years is None]
        assert len(out_of_range) == 1 and out_of_range[0].warnings
        cohort = session.scalar(select(Cohort).where(Cohort.name == "mixed"))
        assert cohort is not None
        members = session.scalar(
            select(func.count())
            .select_from(CohortMember)
            .where(CohortMember.cohort_id == cohort.id)
        )
        assert members == 3  # A/1, B/1 and the injection patient's encounter
        assert (session.scalar(select(func.count()).select_from(AuditEvent)) or 0) >= 3
    assert "patients" in inspect(store.engine).get_table_names()


def test_stored_arrays_are_the_decoded_signals(
    store: Store, shared_data: Path, tmp_path: Path
) -> None:
    headers = copy_ptbxl_records(shared_data, tmp_path / "ecg", 1)
    items = list(iter_items_from_paths(headers))
    assert ingest(store, items).ingested == 1
    with store.session() as session:
        ecg = session.scalar(select(EcgRecord))
    assert ecg is not None
    signal = store.blobs.get_array(ecg.signal_blob)
    assert signal.shape == (12, 5000) and signal.dtype == np.float32
    record = wfdb.rdrecord(str(headers[0].with_suffix("")))
    lead_i = record.p_signal[:, [n.upper() for n in record.sig_name].index("I")]
    np.testing.assert_allclose(signal[0], lead_i, atol=1e-3)
    assert ecg.leads_present[:3] == ["I", "II", "III"] and ecg.sampling_rate == 500
    for blob in referenced_blobs(store):
        assert store.blobs.exists(blob)


def _bad_inputs(folder: Path, shared_data: Path) -> dict[str, str]:
    """Write one bad input per reason; return file name → expected reason code."""
    folder.mkdir(parents=True)
    expected: dict[str, str] = {}
    good = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    good.Modality = "CR"
    good.save_as(folder / "good.dcm")
    data = (folder / "good.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    expected["truncated.dcm"] = "dicom_truncated"
    no_pixels = pydicom.dcmread(folder / "good.dcm")
    del no_pixels.PixelData
    no_pixels.save_as(folder / "no_pixels.dcm")
    expected["no_pixels.dcm"] = "dicom_no_pixel_data"
    absurd = pydicom.dcmread(folder / "good.dcm")
    absurd.Rows, absurd.Columns = 60000, 60000
    absurd.save_as(folder / "absurd.dcm")
    expected["absurd.dcm"] = "dicom_dimensions_absurd"
    shutil.copy(pydicom_file("rtplan.dcm"), folder / "plan.dcm")
    expected["plan.dcm"] = "dicom_not_image"
    (folder / "notes.dcm").write_text("this is not a DICOM file\n")
    expected["notes.dcm"] = "dicom_not_dicom"
    (folder / "good.dcm").unlink()
    mitbih = shared_data / "wfdb-samples"
    for file in mitbih.glob("100.*"):
        shutil.copy(file, folder / file.name)
    expected["100.hea"] = "ecg_missing_leads"
    _write_all_nan_ecg(folder)
    expected["allnan.hea"] = "ecg_no_usable_signal"
    header = copy_ptbxl_records(shared_data, folder, 1)[0]
    text = header.read_text().splitlines()
    fields = text[0].split()
    fields[3] = str(int(fields[3]) + 500)
    header.write_text("\n".join([" ".join(fields), *text[1:]]) + "\n")
    expected[header.name] = "ecg_length_mismatch"
    (folder / "binary_report.txt").write_bytes(bytes(range(256)) * 4)
    expected["binary_report.txt"] = "report_undecodable"
    return expected


def _write_all_nan_ecg(folder: Path) -> None:
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = np.full((5000, 12), np.nan)
    wfdb.wrsamp(
        "allnan", fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal,
        fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder),
    )  # fmt: skip


def test_bad_inputs_are_quarantined_each_with_its_reason(
    store: Store, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    expected = _bad_inputs(folder, shared_data)
    summary = ingest(store, list(iter_items_from_paths([folder])))
    with store.session() as session:
        rows = {Path(q.path).name: q for q in session.scalars(select(QuarantineItem))}
    assert {name: rows[name].reason for name in expected} == expected
    assert summary.quarantined == len(expected) and summary.ingested == 0
    assert "MLII" in rows["100.hea"].message and "V5" in rows["100.hea"].message
    for row in rows.values():
        assert row.message and len(row.sha256) == 64
    again = ingest(store, list(iter_items_from_paths([folder])))
    assert again.quarantined == len(expected)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(QuarantineItem)) == len(expected)


def test_nan_samples_in_one_lead_are_masked_and_flagged(
    store: Store, tmp_path: Path, shared_data: Path
) -> None:
    header = copy_ptbxl_records(shared_data, tmp_path / "src", 1)[0]
    record = wfdb.rdrecord(str(header.with_suffix("")))
    signal = record.p_signal.copy()
    signal[:, 6] = np.nan
    wfdb.wrsamp(
        "nanlead", fs=record.fs, units=record.units, sig_name=record.sig_name, p_signal=signal,
        fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path),
    )  # fmt: skip
    summary = ingest(store, list(iter_items_from_paths([tmp_path / "nanlead.hea"])))
    assert summary.ingested == 1
    with store.session() as session:
        ecg = session.scalar(select(EcgRecord))
    assert ecg is not None
    assert "V1" not in ecg.leads_present and "nan" in ecg.quality_flags["V1"]
    assert ecg.has_quality_issue
    assert not np.isnan(store.blobs.get_array(ecg.signal_blob)).any()


def test_duplicate_bytes_under_two_names_are_stored_once(
    store: Store, tmp_path: Path, shared_data: Path
) -> None:
    png = sorted((shared_data / "hannover-cxr" / "png").rglob("*.png"))[0]
    folder = tmp_path / "dup"
    folder.mkdir()
    shutil.copy(png, folder / "a.png")
    shutil.copy(png, folder / "b.png")
    summary = ingest(store, list(iter_items_from_paths([folder])))
    assert (summary.ingested, summary.already_stored) == (1, 1)
    linked = [
        IngestItem(kind=ItemKind.XRAY, source=str(p), path=p, patient_key=f"other-{p.stem}")
        for p in sorted(folder.iterdir())
    ]
    assert ingest(store, linked).already_stored == 2  # same bytes, whoever they are linked to


def test_dicom_identifiers_never_reach_the_store(store: Store, tmp_path: Path) -> None:
    source = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    source.Modality = "DX"
    source.PatientName = "Doe^Jane"
    source.PatientID = "MRN7654321"
    source.InstitutionName = "Saint Example Hospital"
    path = tmp_path / "cr.dcm"
    source.save_as(path)
    assert ingest(store, list(iter_items_from_paths([path]))).ingested == 1
    with store.session() as session:
        xray = session.scalar(select(XrayImage))
        patient = session.scalar(select(Patient))
    assert xray is not None and patient is not None
    assert patient.pseudonym == Pseudonymizer(TEST_KEY.encode()).patient("MRN7654321")
    stored = store.blobs.get(xray.file_blob)
    for secret in (b"Doe^Jane", b"MRN7654321", b"Saint Example"):
        assert secret not in stored
    assert "MRN7654321" not in str(xray.attributes)
    cleaned = pydicom.dcmread(store.blobs.path(xray.file_blob))
    assert cleaned.PatientIdentityRemoved == "YES"


def test_items_without_patient_ids_in_records_are_quarantined(store: Store, tmp_path: Path) -> None:
    table = tmp_path / "records.csv"
    table.write_text("patient_id,age_years\n,40\nP1,41\n")
    summary = ingest(store, list(iter_items_from_paths([table])))
    assert (summary.ingested, summary.quarantined) == (1, 1)
    assert summary.quarantined_by_reason == {"record_missing_id": 1}


@pytest.mark.parametrize("workers", [2])
def test_parallel_ingest_equals_serial(
    database_url: str, tmp_path: Path, shared_data: Path, workers: int
) -> None:
    from tests.conftest import make_settings

    folder = tmp_path / "in"
    write_mixed_folder(folder, shared_data)
    serial = Store.open(make_settings(tmp_path / "serial", f"sqlite:///{tmp_path / 's.db'}"))
    parallel = Store.open(make_settings(tmp_path / "parallel", database_url))
    one = ingest(serial, list(iter_items_from_paths([folder])))
    two = ingest(parallel, list(iter_items_from_paths([folder])), IngestOptions(workers=workers))
    assert one.as_json() == two.as_json()
    assert modality_counts(serial) == modality_counts(parallel)
    assert serial.blobs.iter_hashes() == parallel.blobs.iter_hashes()
    serial.close()
    parallel.close()


def test_an_item_left_in_flight_by_a_killed_run_is_decoded_in_isolation(
    store: Store, shared_data: Path, tmp_path: Path
) -> None:
    from clinic.ingest.prepare import content_sha256

    headers = copy_ptbxl_records(shared_data, tmp_path / "ecg", 2)
    items = list(iter_items_from_paths(headers))
    journal = store.settings.home / "inflight"
    journal.mkdir(parents=True)
    (journal / "999999999.inflight").write_text(content_sha256(items[0]))
    summary = ingest(store, items)
    assert summary.ingested == 2
    assert list(journal.glob("*.inflight")) == []


def test_reports_in_csv_columns_become_reports(store: Store, tmp_path: Path) -> None:
    free_text = tmp_path / "notes.csv"
    free_text.write_text(
        "patient_id,encounter_id,report_kind,text\n"
        'P1,1,ecg,"Sinus rhythm. Normal ECG."\n'
        'P2,1,,"Patient: Jane Doe. Stable."\n'
    )
    sectioned = tmp_path / "cxr.csv"
    sectioned.write_text(
        "patient_id,encounter_id,indication,findings,impression\n"
        "P3,1,Cough.,No focal consolidation.,Normal chest.\n"
    )
    summary = ingest(store, list(iter_items_from_paths([free_text, sectioned])))
    assert (summary.ingested, summary.quarantined) == (3, 0)
    with store.session() as session:
        reports = {r.text.split()[0]: r for r in session.scalars(select(Report))}
    assert reports["Sinus"].kind == "ecg"
    assert reports["Patient:"].text == "Patient: [NAME]. Stable."
    assert reports["INDICATION:"].sections["impression"] == "Normal chest."


@pytest.mark.slow
def test_a_decoder_that_aborts_the_process_costs_one_item(store: Store, tmp_path: Path) -> None:
    """GDCM aborts on this JPEG 2000 stream; the worker dies, the item is quarantined."""
    from pydicom.encaps import encapsulate

    folder = tmp_path / "in"
    folder.mkdir()
    for name, corrupt in (("good.dcm", False), ("corrupt.dcm", True)):
        dataset = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
        dataset.Modality, dataset.SOPClassUID = "CR", "1.2.840.10008.5.1.4.1.1.1"
        dataset.PatientID = name
        if corrupt:
            dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
        dataset.save_as(folder / name)
    summary = ingest(store, list(iter_items_from_paths([folder])), IngestOptions(workers=1))
    assert summary.ingested == 1
    assert summary.quarantined_by_reason in ({"decoder_crashed": 1}, {"dicom_decode_failed": 1})
    assert list((store.settings.home / "inflight").glob("*.inflight")) == []


def test_a_manifest_given_as_a_file_is_followed(
    store: Store, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    write_mixed_folder(folder, shared_data)
    from_folder = list(iter_items_from_paths([folder]))
    from_file = list(iter_items_from_paths([folder / "manifest.csv"]))
    assert from_file == from_folder and len(from_file) == 9
