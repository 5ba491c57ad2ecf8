"""De-identify DICOM objects: PS3.15 Annex E Basic Application Level Confidentiality Profile.

Applied options (and declared in the header, as the standard asks):

* Basic Application Level Confidentiality Profile (DCM 113100): the Annex E action table for the
  attributes below, removal of every private attribute, of curves (50xx) and of overlays (60xx,
  whose comments and bitmaps may carry text), at every nesting level.
* Retain Longitudinal Temporal Information with Modified Dates Option (DCM 113107): dates and
  date-times are *kept, shifted* by a per-patient number of days instead of being blanked, so that
  intervals between studies survive (needed for longitudinal models). Times of day are unchanged
  by a whole-day shift. Patient's Birth Date is still emptied: PatientAge is kept instead.
* Retain Patient Characteristics Option (DCM 113108), limited to PatientSex and PatientAge: both
  are clinically needed (normal ranges, risk models) and the Basic Profile alone would remove them.

UIDs that are not registered DICOM UIDs (SOP classes, transfer syntaxes and coding schemes are
kept) are replaced by a keyed hash: ``2.25.<int>`` where the integer is an RFC 9562 version-8 UUID
built from HMAC-SHA256(uid_secret, uid). The same source UID therefore always maps to the same new
UID, so a study keeps one Study Instance UID across its files and references stay consistent.

Free-text annotations (Text Value, Unformatted Text Value) are removed too: ECG machines put the
interpretation there, but also "confirmed by" lines naming the reader. Read them from the original
data set before de-identifying if they are needed.

Pixel data is never touched: burned-in annotations (BurnedInAnnotation = YES) are not cleaned here.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import date, timedelta
from io import BytesIO
from typing import Any, Final

import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

__all__ = ["DEIDENTIFICATION_METHOD", "deidentify_dicom", "dicom_to_bytes"]

# (0012,0063) De-identification Method: LO, 1-n values of at most 64 characters each.
DEIDENTIFICATION_METHOD: Final = (
    "PS3.15 Annex E Basic Application Level Confidentiality Profile",
    "Retain Longitudinal Temporal Info with Modified Dates Option",
    "Retain Patient Characteristics (PatientSex, PatientAge only)",
    "clinic.ingest.dicom_deid",
)
_METHOD_CODES: Final = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)
_IMPLEMENTATION_VERSION_NAME: Final = "CLINIC_DEID_1"

# Annex E Table E.1-1 actions (keyword -> action) for the attributes that occur in practice.
# X: remove. Z: keep the attribute with an empty value (type 2 in its IOD). Attributes not
# listed are handled by VR below (UI: replace, DA/DT: shift, PN: empty, AE: remove).
_REMOVE: Final = frozenset(
    [
        "AcquisitionComments",
        "AcquisitionContextSequence",
        "AcquisitionDeviceProcessingDescription",
        "AcquisitionProtocolDescription",
        "ActualHumanPerformersSequence",
        "AdditionalPatientHistory",
        "AdmissionID",
        "AdmittingDate",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "AdmittingTime",
        "Allergies",
        "Arbitrary",
        "AuthorObserverSequence",
        "BranchOfService",
        "CassetteID",
        "ClinicalTrialCoordinatingCenterName",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        "ClinicalTrialProtocolEthicsCommitteeName",
        "ClinicalTrialSeriesDescription",
        "ClinicalTrialSeriesID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSubjectReadingID",
        "ClinicalTrialTimePointDescription",
        "ConfidentialityConstraintOnPatientDataDescription",
        "ConsultingPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "ContentCreatorIdentificationCodeSequence",
        "ContributionDescription",
        "CountryOfResidence",
        "CurrentPatientLocation",
        "CustodialOrganizationSequence",
        "DataSetTrailingPadding",
        "DerivationDescription",
        "DetectorID",
        "DeviceDescription",
        "DeviceLabel",
        "DeviceSerialNumber",
        "DigitalSignaturesSequence",
        "DischargeDiagnosisDescription",
        "DistributionAddress",
        "DistributionName",
        "EncryptedAttributesSequence",
        "EthnicGroup",
        "EvaluatorName",
        "FillerOrderNumberImagingServiceRequest",
        "FrameComments",
        "GantryID",
        "GeneratorID",
        "HumanPerformerName",
        "HumanPerformerOrganization",
        "IconImageSequence",
        "IdentifyingComments",
        "ImageComments",
        "ImagePresentationComments",
        "ImagingServiceRequestComments",
        "Impressions",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence",
        "InsurancePlanIdentification",
        "IntendedRecipientsOfResultsIdentificationSequence",
        "InterpretationApproverSequence",
        "InterpretationAuthor",
        "InterpretationDiagnosisDescription",
        "InterpretationIDIssuer",
        "InterpretationRecorder",
        "InterpretationText",
        "InterpretationTranscriber",
        "IssuerOfAccessionNumberSequence",
        "IssuerOfAdmissionID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "IssuerOfServiceEpisodeID",
        "LastMenstrualDate",
        "MACParametersSequence",
        "MedicalAlerts",
        "MedicalRecordLocator",
        "MilitaryRank",
        "ModifiedAttributesSequence",
        "ModifiedImageDescription",
        "ModifyingDeviceID",
        "ModifyingDeviceManufacturer",
        "NameOfPhysiciansReadingStudy",
        "NamesOfIntendedRecipientsOfResults",
        "Occupation",
        "OperatorIdentificationSequence",
        "OperatorsName",
        "OrderCallbackPhoneNumber",
        "OrderEnteredBy",
        "OrderEntererLocation",
        "OrderFillerIdentifierSequence",
        "OrderPlacerIdentifierSequence",
        "OriginalAttributesSequence",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "ParticipantSequence",
        "PatientAddress",
        "PatientAlternativeCalendar",
        "PatientBirthDateInAlternativeCalendar",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientDeathDateInAlternativeCalendar",
        "PatientInstitutionResidence",
        "PatientInsurancePlanCodeSequence",
        "PatientMotherBirthName",
        "PatientPrimaryLanguageCodeSequence",
        "PatientPrimaryLanguageModifierCodeSequence",
        "PatientReligiousPreference",
        "PatientSexNeutered",
        "PatientSize",
        "PatientState",
        "PatientTelecomInformation",
        "PatientTelephoneNumbers",
        "PatientTransportArrangements",
        "PatientWeight",
        "PerformedLocation",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformingPhysicianIdentificationSequence",
        "PerformingPhysicianName",
        "PersonAddress",
        "PersonIdentificationCodeSequence",
        "PersonTelecomInformation",
        "PersonTelephoneNumbers",
        "PhysicianApprovingInterpretation",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence",
        "PlateID",
        "PlacerOrderNumberImagingServiceRequest",
        "PreMedication",
        "PregnancyStatus",
        "ProtocolName",
        "ReasonForStudy",
        "ReasonForTheImagingServiceRequest",
        "ReasonForVisit",
        "ReasonForVisitCodeSequence",
        "ReferencedDigitalSignatureSequence",
        "ReferencedPatientAliasSequence",
        "ReferencedPatientPhotoSequence",
        "ReferencedPatientSequence",
        "ReferencedPerformedProcedureStepSequence",
        "ReferencedStudySequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianTelephoneNumbers",
        "RegionOfResidence",
        "RequestAttributesSequence",
        "RequestedContrastAgent",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestedProcedureLocation",
        "RequestingPhysician",
        "RequestingPhysicianIdentificationSequence",
        "RequestingService",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "ResponsiblePersonRole",
        "ResultsComments",
        "ResultsDistributionListSequence",
        "ResultsIDIssuer",
        "ReviewerName",
        "ScheduledHumanPerformersSequence",
        "ScheduledPatientInstitutionResidence",
        "ScheduledPerformingPhysicianIdentificationSequence",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepLocation",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "ScheduledStudyLocation",
        "ScheduledStudyLocationAETitle",
        "SeriesDescription",
        "ServiceEpisodeDescription",
        "ServiceEpisodeID",
        "SmokingStatus",
        "SoftwareVersions",
        "SpecialNeeds",
        "StationAETitle",
        "StationName",
        "StudyComments",
        "StudyDescription",
        "StudyIDIssuer",
        "TextComments",
        "TextString",
        "TextValue",
        "UnformattedTextValue",
        "TimezoneOffsetFromUTC",
        "TopicAuthor",
        "TopicKeywords",
        "TopicSubject",
        "TopicTitle",
        "VerifyingOrganization",
        "VisitComments",
    ]
)
_EMPTY: Final = frozenset(
    [
        "AccessionNumber",
        "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSponsorName",
        "ClinicalTrialSubjectID",
        "ClinicalTrialTimePointID",
        "ContentCreatorName",
        "ContrastBolusAgent",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "StudyID",
        "VerifyingObserverIdentificationCodeSequence",
        "VerifyingObserverName",
    ]
)
# Kept as they are (Retain Patient Characteristics, limited).
_KEEP: Final = frozenset({"PatientSex", "PatientAge"})
# Set to the pseudonym wherever they occur.
_PSEUDONYMISED: Final = frozenset({"PatientName", "PatientID"})
# Free-text attribute families removed even when the table above does not name them.
_REMOVED_KEYWORD_PARTS: Final = ("Comments", "Address", "Telephone", "Telecom")
# File meta elements naming the sending system (Annex E: X).
_META_REMOVE: Final = frozenset(
    {
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "SourcePresentationAddress",
        "SendingPresentationAddress",
        "ReceivingPresentationAddress",
        "PrivateInformationCreatorUID",
        "PrivateInformation",
    }
)
_CURVE_GROUPS: Final = range(0x5000, 0x5100)
_OVERLAY_GROUPS: Final = range(0x6000, 0x6100)
# DA as the standard writes it, and the ACR-NEMA "YYYY.MM.DD" that old files still carry.
_DATE_FORMATS: Final = (
    re.compile(r"^(\d{4})(\d{2})(\d{2})$"),
    re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$"),
)


def deidentify_dicom(
    ds: Dataset,
    *,
    patient_pseudonym: str,
    date_shift_days: int,
    uid_secret: bytes,
    in_place: bool = False,
) -> Dataset:
    """Return a de-identified copy of ``ds`` (see the module docstring for the profile).

    PatientName and PatientID become ``patient_pseudonym``; every date moves by
    ``date_shift_days`` (use one shift per patient so intervals stay true); UIDs are replaced
    with keyed, deterministic ones. PatientSex and PatientAge are kept on purpose: models and
    reference ranges need them, and they do not identify a patient on their own.

    ``in_place=True`` edits ``ds`` itself: the ingestion engine has finished reading it by then,
    and skipping the deep copy (Pixel Data included) saves a pass over the file. Value
    validation is off while editing: every value written here is generated by this module.
    """
    if not patient_pseudonym.strip():
        raise ValueError("patient_pseudonym must not be empty")
    if not uid_secret:
        raise ValueError("uid_secret must not be empty")
    out = ds if in_place else copy.deepcopy(ds)
    rules = _Rules(
        pseudonym=patient_pseudonym,
        shift=timedelta(days=date_shift_days),
        secret=uid_secret,
    )
    with pydicom.config.disable_value_validation():
        _clean_dataset(out, rules)
        meta = getattr(out, "file_meta", None)
        if isinstance(meta, FileMetaDataset):
            _clean_file_meta(meta, rules)
        out.PatientName = patient_pseudonym
        out.PatientID = patient_pseudonym
        _declare(out)
    if getattr(out, "preamble", None) is not None:
        out.preamble = b"\x00" * 128  # vendors sometimes hide data in the preamble
    return out


def dicom_to_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM file (preamble, DICM, file meta) without re-encoding pixels.

    The transfer syntax of ``ds.file_meta`` is kept, so compressed Pixel Data is written back
    byte for byte. pydicom works on a copy of the file meta, so ``ds`` itself is not changed
    (apart from pydicom marking encapsulated Pixel Data as undefined length, which it is).
    """
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class _Rules:
    """The per-call de-identification parameters and the UID/date transforms built on them."""

    def __init__(self, *, pseudonym: str, shift: timedelta, secret: bytes) -> None:
        self.pseudonym = pseudonym
        self.shift = shift
        self.secret = secret

    def uid(self, value: str) -> str:
        """Keyed replacement UID for ``value``; registered DICOM UIDs are returned unchanged."""
        original = value.strip().rstrip("\x00")
        if not original or UID(original).name != original:
            return original
        mac = hmac.new(self.secret, original.encode("ascii", "replace"), hashlib.sha256)
        digest = bytearray(mac.digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x80  # RFC 9562 version 8 (custom)
        digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"2.25.{int.from_bytes(digest, 'big')}"

    def date(self, value: str) -> str:
        """Shift a DA value; empty for values that are not a full date (cannot be shifted)."""
        text = value.strip()
        for pattern in _DATE_FORMATS:
            match = pattern.match(text)
            if match is None:
                continue
            try:
                day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
                moved = day + self.shift
            except (ValueError, OverflowError):
                return ""
            return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"
        return ""

    def datetime(self, value: str) -> str:
        """Shift the date part of a DT value, keeping time and UTC offset as they are."""
        text = value.strip()
        shifted = self.date(text[:8]) if len(text) >= 8 else ""
        return shifted + text[8:] if shifted else ""


def _map_value(value: Any, transform: Callable[[str], str]) -> Any:
    """Apply ``transform`` to a single value or to each of a multi-value."""
    if isinstance(value, MultiValue | list):
        return [transform(str(v)) for v in value]
    return transform(str(value))


def _clean_dataset(ds: Dataset, rules: _Rules) -> None:
    """Apply the profile to every element of ``ds`` and, recursively, to its sequences."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if _must_remove(tag, elem):
            del ds[tag]
            continue
        keyword = elem.keyword
        if keyword in _KEEP:
            continue
        if keyword in _PSEUDONYMISED:
            elem.value = rules.pseudonym
        elif keyword in _EMPTY:
            elem.value = Sequence() if elem.VR == "SQ" else ""
        elif elem.VR == "SQ":
            for item in elem.value or ():
                _clean_dataset(item, rules)
        else:
            _clean_by_vr(elem, rules)


def _must_remove(tag: BaseTag, elem: DataElement) -> bool:
    """Private tags, curves, overlays, AE titles, the X rows and the free-text families."""
    if tag.is_private or tag.group in _CURVE_GROUPS or tag.group in _OVERLAY_GROUPS:
        return True
    keyword = elem.keyword
    if keyword in _REMOVE or elem.VR == "AE":
        return True
    return keyword not in _KEEP and any(part in keyword for part in _REMOVED_KEYWORD_PARTS)


def _clean_by_vr(elem: DataElement, rules: _Rules) -> None:
    """Replace UIDs, shift dates and date-times, empty person names."""
    if elem.value is None or elem.value == "":
        return
    if elem.VR == "UI":
        elem.value = _map_value(elem.value, rules.uid)
    elif elem.VR == "DA":
        elem.value = _map_value(elem.value, rules.date)
    elif elem.VR == "DT":
        elem.value = _map_value(elem.value, rules.datetime)
    elif elem.VR == "PN":
        elem.value = ""


def _clean_file_meta(meta: FileMetaDataset, rules: _Rules) -> None:
    """Map the instance UID like SOPInstanceUID; drop sender identities; name this writer."""
    for keyword in _META_REMOVE:
        if keyword in meta:
            delattr(meta, keyword)
    if "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = UID(rules.uid(str(meta.MediaStorageSOPInstanceUID)))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME


def _declare(ds: Dataset) -> None:
    """Record that and how the object was de-identified (PS3.15 E.1.1 and PS3.3 C.7.1.1)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(DEIDENTIFICATION_METHOD)
    codes = []
    for value, meaning in _METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
