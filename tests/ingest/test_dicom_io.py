"""load_dicom on real files from pydicom's test corpus and on real files broken in known ways."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

from clinic.ingest.dicom_io import is_waveform, load_dicom
from clinic.ingest.errors import IngestError, ReasonCode

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def sample_file(name: str) -> Path:
    """A real file from pydicom's (or pydicom-data's) test corpus; skip when not installed."""
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(str(found))


def value_offset(path: Path, keyword: str) -> int:
    """Where the value of ``keyword`` starts in the file (read lazily, so still raw)."""
    element = pydicom.dcmread(path).get_item(keyword)
    assert isinstance(element, RawDataElement)
    return int(element.value_tell)


def refused(path: Path) -> ReasonCode:
    with pytest.raises(IngestError) as caught:
        load_dicom(path)
    return caught.value.reason


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_real_files_load_and_are_fully_parsed() -> None:
    ds = load_dicom(sample_file("CT_small.dcm"))
    assert ds.Modality == "CT"
    # every element was converted here, not left raw for later
    tags = list(ds.keys())
    assert all(not isinstance(ds.get_item(tag), RawDataElement) for tag in tags)
    assert ds.OtherPatientIDsSequence[0].PatientID == "ABCD1234"
    assert load_dicom(sample_file("MR_small_RLE.dcm")).file_meta.TransferSyntaxUID.is_compressed


def test_raw_data_set_without_preamble_is_read() -> None:
    ds = load_dicom(sample_file("rtstruct.dcm"))  # a real object stored without PS3.10 header
    assert ds.Modality == "RTSTRUCT"


def test_path_is_not_kept_on_the_data_set(tmp_path: Path) -> None:
    target = tmp_path / "Doe^Jane" / "study.dcm"
    target.parent.mkdir()
    shutil.copy(sample_file("CT_small.dcm"), target)
    assert "Doe" not in str(load_dicom(target).filename)


def test_waveform_is_detected() -> None:
    assert is_waveform(load_dicom(sample_file("waveform_ecg.dcm")))
    assert not is_waveform(load_dicom(sample_file("CT_small.dcm")))


def test_empty_file(tmp_path: Path) -> None:
    assert refused(write(tmp_path, "empty.dcm", b"")) is ReasonCode.FILE_EMPTY


def test_missing_file(tmp_path: Path) -> None:
    assert refused(tmp_path / "absent.dcm") is ReasonCode.FILE_UNREADABLE


def test_text_named_dcm_is_not_dicom(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.dcm", b"Patient seen today, chest clear.\n" * 20)
    assert refused(path) is ReasonCode.DICOM_NOT_DICOM


def test_png_named_dcm_is_not_dicom(tmp_path: Path, shared_data: Path) -> None:
    png = sorted((shared_data / "hannover-cxr" / "png").glob("*.png"))[0]
    path = tmp_path / "image.dcm"
    shutil.copy(png, path)
    assert refused(path) is ReasonCode.DICOM_NOT_DICOM


def test_zero_bytes_without_prefix_are_not_dicom(tmp_path: Path) -> None:
    assert refused(write(tmp_path, "zeros.dcm", b"\x00" * 600)) is ReasonCode.DICOM_NOT_DICOM


def test_pydicom_truncated_sample() -> None:
    assert refused(sample_file("MR_truncated.dcm")) is ReasonCode.DICOM_TRUNCATED


def test_real_encapsulated_file_without_delimiter() -> None:
    path = sample_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    assert refused(path) is ReasonCode.DICOM_TRUNCATED


def test_good_file_cut_in_pixel_data(tmp_path: Path) -> None:
    source = sample_file("CT_small.dcm")
    pixel_start = value_offset(source, "PixelData")
    path = write(tmp_path, "cut.dcm", source.read_bytes()[: pixel_start + 1000])
    assert refused(path) is ReasonCode.DICOM_TRUNCATED


def test_good_file_cut_in_a_header_value(tmp_path: Path) -> None:
    source = sample_file("CT_small.dcm")
    value_start = value_offset(source, "InstitutionName")
    path = write(tmp_path, "cut.dcm", source.read_bytes()[: value_start + 3])
    assert refused(path) is ReasonCode.DICOM_TRUNCATED


def test_good_file_cut_inside_an_element_header(tmp_path: Path) -> None:
    source = sample_file("CT_small.dcm")
    header_start = value_offset(source, "Rows") - 8  # explicit VR US: tag 4, VR 2, length 2
    path = write(tmp_path, "cut.dcm", source.read_bytes()[: header_start + 5])
    assert refused(path) is ReasonCode.DICOM_TRUNCATED


def test_compressed_file_cut_in_pixel_data(tmp_path: Path) -> None:
    raw = sample_file("MR_small_RLE.dcm").read_bytes()
    assert refused(write(tmp_path, "cut.dcm", raw[:-500])) is ReasonCode.DICOM_TRUNCATED


def test_deflated_file_cut_short(tmp_path: Path) -> None:
    raw = sample_file("image_dfl.dcm").read_bytes()
    assert refused(write(tmp_path, "cut.dcm", raw[:2000])) is ReasonCode.DICOM_TRUNCATED


def test_file_ending_after_the_preamble(tmp_path: Path) -> None:
    raw = sample_file("CT_small.dcm").read_bytes()
    assert refused(write(tmp_path, "cut.dcm", raw[:132])) is ReasonCode.DICOM_TRUNCATED


def test_any_cut_is_loaded_or_refused_never_crashes(tmp_path: Path) -> None:
    raw = sample_file("MR_small.dcm").read_bytes()
    reasons = set()
    for cut in range(1, len(raw), 37):
        try:
            load_dicom(write(tmp_path, "cut.dcm", raw[:cut]))
        except IngestError as exc:
            reasons.add(exc.reason)
    assert reasons <= {ReasonCode.DICOM_NOT_DICOM, ReasonCode.DICOM_TRUNCATED}
    assert ReasonCode.DICOM_TRUNCATED in reasons


def test_bad_vr_value_is_invalid() -> None:
    with pytest.raises(IngestError) as caught:
        load_dicom(sample_file("badVR.dcm"))
    assert caught.value.reason is ReasonCode.DICOM_INVALID
    patient_name = str(pydicom.dcmread(sample_file("badVR.dcm")).get("PatientName", ""))
    if patient_name:
        assert patient_name not in str(caught.value)
