"""De-identification of real DICOM files (pydicom's corpus), loaded with extra identifiers."""

from __future__ import annotations

import copy
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from clinic.ingest.dicom_deid import deidentify_dicom, dicom_to_bytes
from clinic.ingest.dicom_io import load_dicom
from clinic.ingest.xray import decode_dicom_xray

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SECRET = b"unit-test-uid-secret-0123456789abcdef"
PSEUDONYM = "PSN-7f3a9c"
SHIFT = -1000
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

# Identifying strings planted in the data set (long and unique, so a byte scan is meaningful).
PLANTED = {
    "PatientName": "Quackenbush^Zebulon^Q",
    "PatientID": "MRN-4417-2291",
    "PatientBirthDate": "19400305",
    "PatientAddress": "12 Rue Imaginaire Lyon",
    "PatientTelephoneNumbers": "+33-4-5555-0199",
    "OtherPatientNames": "Quackenbush^Zeb",
    "PatientComments": "lives with daughter Philippa",
    "InstitutionName": "St Elsewhere Memorial",
    "InstitutionAddress": "1 Hospital Row Springfield",
    "InstitutionalDepartmentName": "Radiology East Wing",
    "ReferringPhysicianName": "Feelgood^Xavier^Dr",
    "PerformingPhysicianName": "Hibbert^Julius",
    "OperatorsName": "Technician^Tabitha",
    "NameOfPhysiciansReadingStudy": "Reader^Rosalind",
    "AccessionNumber": "ACC-90210-77",
    "StationName": "XRAYROOM7-WEST",
    "DeviceSerialNumber": "SN-00-A1B2C3D4",
    "StudyID": "STUDY-31337",
    "ImageComments": "portable film, patient Quackenbush",
    "StudyDescription": "CHEST FOR ZEBULON",
    "SeriesDescription": "AP ERECT WARD 9",
    "ProtocolName": "QUACK-PROTOCOL",
}


def sample_file(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(str(found))


def planted_dataset() -> Dataset:
    """Real CT_small (private GE tags, Other Patient IDs) plus identifiers everywhere."""
    ds = load_dicom(sample_file("CT_small.dcm"))
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.AcquisitionDateTime = "19970430112936.123456+0100"
    ds.PatientAge = "057Y"
    ds.PatientSex = "F"
    request = Dataset()
    request.RequestedProcedureID = "REQ-555-NINE"
    request.ScheduledProcedureStepID = "SPS-4242-X"
    ds.RequestAttributesSequence = Sequence([request])
    reference = Dataset()
    reference.ReferencedSOPClassUID = CR_STORAGE
    reference.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1143.777.1"
    reference.add_new(0x00291010, "LO", "PRIVATE-MRN-998877")  # private, nested
    person = Dataset()
    person.PersonName = "Nested^Nathaniel"
    person.InstanceCreationDate = "20040119"
    reference.ContentSequence = Sequence([person])
    ds.ReferencedImageSequence = Sequence([reference])
    ds.add_new(0x00290010, "LO", "ACME HOSPITAL PRIVATE")  # private creator
    ds.add_new(0x00291010, "LO", "PRIVATE-TOP-123456")
    ds.add_new(0x50003000, "OW", b"CURVE-SECRET-DATA-01")  # curve
    ds.add_new(0x60004000, "LT", "OVERLAY NOTE ABOUT ZEBULON")  # overlay comments
    ds.preamble = b"PREAMBLE-HIDDEN-ID".ljust(128, b"\x00")
    return ds


def deidentify(ds: Dataset, secret: bytes = SECRET) -> Dataset:
    return deidentify_dicom(
        ds, patient_pseudonym=PSEUDONYM, date_shift_days=SHIFT, uid_secret=secret
    )


def shifted(value: str) -> str:
    day = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=SHIFT)
    return day.strftime("%Y%m%d")


def all_elements(ds: Dataset) -> list[pydicom.DataElement]:
    found = []
    for elem in ds.iterall():
        found.append(elem)
    return found


def test_no_original_identifier_remains_in_the_written_bytes() -> None:
    original = planted_dataset()
    uids = [str(e.value) for e in all_elements(original) if e.VR == "UI"]
    nested_ids = [item.PatientID for item in original.OtherPatientIDsSequence]
    before = dicom_to_bytes(original)
    written = dicom_to_bytes(deidentify(original))
    secrets = [
        *PLANTED.values(),
        *nested_ids,
        "REQ-555-NINE",
        "SPS-4242-X",
        "Nested^Nathaniel",
        "PRIVATE-MRN-998877",
        "PRIVATE-TOP-123456",
        "ACME HOSPITAL PRIVATE",
        "CURVE-SECRET-DATA-01",
        "OVERLAY NOTE",
        "PREAMBLE-HIDDEN-ID",
        "GEMS_",
        "CLUNIE1",
    ]
    secrets += [uid for uid in uids if UID(uid).name == uid]  # unregistered = identifying UIDs
    assert all(text.encode("ascii") in before for text in secrets)  # the scan can find them
    leaked = [text for text in secrets if text.encode("ascii") in written]
    assert leaked == []
    assert PSEUDONYM.encode() in written


def test_real_file_identifiers_are_gone() -> None:
    original = load_dicom(sample_file("CT_small.dcm"))
    written = dicom_to_bytes(deidentify(original))
    for text in ("CompressedSamples^CT1", "JFK IMAGING CENTER", "CT01_OC0", "ABCD1234", "1CT1"):
        assert text.encode() in dicom_to_bytes(original)
        assert text.encode() not in written, text


def test_private_curve_and_overlay_elements_are_gone_at_every_level() -> None:
    result = deidentify(planted_dataset())
    for elem in all_elements(result):
        assert not elem.tag.is_private, elem.tag
        assert not 0x5000 <= elem.tag.group <= 0x50FF, elem.tag
        assert not 0x6000 <= elem.tag.group <= 0x60FF, elem.tag


def test_identifiers_are_replaced_and_characteristics_kept() -> None:
    result = deidentify(planted_dataset())
    assert result.PatientName == PSEUDONYM
    assert result.PatientID == PSEUDONYM
    assert result.PatientSex == "F"
    assert result.PatientAge == "057Y"
    assert result.PatientBirthDate == ""
    assert result.AccessionNumber == ""
    assert result.StudyID == ""
    assert result.ReferringPhysicianName == ""
    for keyword in (
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "OperatorsName",
        "PerformingPhysicianName",
        "StationName",
        "DeviceSerialNumber",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "RequestAttributesSequence",
        "ImageComments",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "StudyDescription",
        "TimezoneOffsetFromUTC",
    ):
        assert keyword not in result, keyword
    assert result.Manufacturer == "GE MEDICAL SYSTEMS"  # not identifying, kept
    assert result.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_profile_is_declared() -> None:
    result = deidentify(planted_dataset())
    assert result.PatientIdentityRemoved == "YES"
    assert "Basic Application Level Confidentiality Profile" in result.DeidentificationMethod[0]
    codes = {(item.CodingSchemeDesignator, item.CodeValue) for item in result[0x00120064].value}
    assert {("DCM", "113100"), ("DCM", "113107")} <= codes
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    assert all(len(value) <= 64 for value in result.DeidentificationMethod)


def test_dates_shift_by_the_given_days_and_times_stay() -> None:
    original = planted_dataset()
    result = deidentify(original)
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        assert result[keyword].value == shifted(original[keyword].value), keyword
    assert result.StudyTime == original.StudyTime
    assert result.AcquisitionDateTime == shifted("19970430") + "112936.123456+0100"
    nested = result.ReferencedImageSequence[0].ContentSequence[0]
    assert nested.InstanceCreationDate == shifted("20040119")


def test_sequences_are_cleaned_recursively() -> None:
    result = deidentify(planted_dataset())
    reference = result.ReferencedImageSequence[0]
    assert reference.ReferencedSOPClassUID == CR_STORAGE  # registered UID kept
    assert reference.ReferencedSOPInstanceUID != "1.2.826.0.1.3680043.2.1143.777.1"
    assert reference.ReferencedSOPInstanceUID.startswith("2.25.")
    assert reference.ContentSequence[0].PersonName == ""
    assert 0x00291010 not in reference


def test_uids_are_keyed_and_consistent_across_files() -> None:
    first = planted_dataset()
    second = planted_dataset()
    second.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.777.2"
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID
    a, b = deidentify(first), deidentify(second)
    assert a.StudyInstanceUID == b.StudyInstanceUID  # one study keeps one UID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    for uid in (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID, a.FrameOfReferenceUID):
        assert re.fullmatch(r"2\.25\.[1-9]\d*", uid)
        assert len(uid) <= 64 and UID(uid).is_valid
    other_key = deidentify(planted_dataset(), secret=b"another-secret")
    assert other_key.StudyInstanceUID != a.StudyInstanceUID


def test_input_is_not_modified() -> None:
    original = planted_dataset()
    before = copy.deepcopy(original)
    deidentify(original)
    assert original == before
    assert original.PatientName == PLANTED["PatientName"]


def test_written_file_is_valid_and_pixels_are_not_re_encoded(tmp_path: Path) -> None:
    original = load_dicom(sample_file("MR_small_RLE.dcm"))
    written = dicom_to_bytes(deidentify(original))
    assert written[128:132] == b"DICM"
    assert written[:128] == b"\x00" * 128
    path = tmp_path / "clean.dcm"
    path.write_bytes(written)
    back = load_dicom(path)  # the strict loader accepts it
    assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert back.PixelData == original.PixelData  # encapsulated bytes written back untouched
    assert back.file_meta.ImplementationClassUID != original.file_meta.ImplementationClassUID


def test_real_chest_radiograph_round_trip_decodes_identically(tmp_path: Path) -> None:
    original = load_dicom(sample_file("RG1_UNCR.dcm"))
    path = tmp_path / "clean.dcm"
    path.write_bytes(dicom_to_bytes(deidentify(original)))
    back = load_dicom(path)
    assert back.PatientName == PSEUDONYM
    assert back.StudyDate == shifted("20040826")
    assert np.array_equal(decode_dicom_xray(back).pixels, decode_dicom_xray(original).pixels)
    assert b"CompressedSamples^RG1" not in path.read_bytes()
    assert b"9RG1" not in path.read_bytes()


def test_ecg_waveform_survives_deidentification() -> None:
    original = load_dicom(sample_file("waveform_ecg.dcm"))
    result = deidentify(original)
    assert len(result.WaveformSequence) == len(original.WaveformSequence)
    for clean, source in zip(result.WaveformSequence, original.WaveformSequence, strict=True):
        assert clean.WaveformData == source.WaveformData
        assert clean.NumberOfWaveformChannels == source.NumberOfWaveformChannels
    written = dicom_to_bytes(result)
    for text in ("642341", "E. O. Ospedali Galliera", "13002689", "RITMO SINUSALE"):
        assert text.encode() in dicom_to_bytes(original)
        assert text.encode() not in written, text  # free-text annotations go too


@pytest.mark.parametrize(("pseudonym", "secret"), [("", SECRET), ("  ", SECRET), (PSEUDONYM, b"")])
def test_missing_pseudonym_or_secret_is_an_error(pseudonym: str, secret: bytes) -> None:
    with pytest.raises(ValueError):
        deidentify_dicom(
            planted_dataset(), patient_pseudonym=pseudonym, date_shift_days=1, uid_secret=secret
        )
