"""Why an input was refused.

Every refusal carries a specific :class:`ReasonCode` and a human message that names the problem
without quoting patient data, so the quarantine table can be browsed and counted by reason.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Specific reasons an input file is quarantined (never a catch-all)."""

    # files in general
    FILE_UNREADABLE = "file_unreadable"
    FILE_EMPTY = "file_empty"
    UNKNOWN_FORMAT = "unknown_format"
    DECODER_CRASHED = "decoder_crashed"
    DECODE_TIMEOUT = "decode_timeout"
    # DICOM
    DICOM_NOT_DICOM = "dicom_not_dicom"
    DICOM_TRUNCATED = "dicom_truncated"
    DICOM_INVALID = "dicom_invalid"
    DICOM_NO_PIXEL_DATA = "dicom_no_pixel_data"
    DICOM_NOT_IMAGE = "dicom_not_image"
    DICOM_UNSUPPORTED_MODALITY = "dicom_unsupported_modality"
    DICOM_MULTIFRAME = "dicom_multiframe"
    DICOM_DIMENSIONS_ABSURD = "dicom_dimensions_absurd"
    DICOM_PIXEL_SIZE_MISMATCH = "dicom_pixel_size_mismatch"
    DICOM_UNSUPPORTED_TRANSFER_SYNTAX = "dicom_unsupported_transfer_syntax"
    DICOM_DECODE_FAILED = "dicom_decode_failed"
    DICOM_DECODE_TIMEOUT = "dicom_decode_timeout"
    DICOM_UNSUPPORTED_PHOTOMETRIC = "dicom_unsupported_photometric"
    # raster radiographs (PNG / JPEG)
    IMAGE_DECODE_FAILED = "image_decode_failed"
    IMAGE_DIMENSIONS_ABSURD = "image_dimensions_absurd"
    IMAGE_BLANK = "image_blank"
    # ECG
    ECG_HEADER_INVALID = "ecg_header_invalid"
    ECG_DATA_MISSING = "ecg_data_missing"
    ECG_LENGTH_MISMATCH = "ecg_length_mismatch"
    ECG_MISSING_LEADS = "ecg_missing_leads"
    ECG_TOO_SHORT = "ecg_too_short"
    ECG_NO_USABLE_SIGNAL = "ecg_no_usable_signal"
    ECG_UNSUPPORTED_UNITS = "ecg_unsupported_units"
    ECG_WAVEFORM_MISSING = "ecg_waveform_missing"
    ECG_UNSUPPORTED_STORAGE = "ecg_unsupported_storage"
    ECG_DECODE_FAILED = "ecg_decode_failed"
    # clinical records
    RECORD_UNREADABLE = "record_unreadable"
    RECORD_MISSING_ID = "record_missing_id"
    # reports
    REPORT_UNDECODABLE = "report_undecodable"
    REPORT_EMPTY = "report_empty"
    # manifests / importers
    MANIFEST_INVALID = "manifest_invalid"
    MANIFEST_FILE_MISSING = "manifest_file_missing"
    IMPORT_LAYOUT_INVALID = "import_layout_invalid"
    IMPORT_ROW_INVALID = "import_row_invalid"
    IMPORT_LABELS_INVALID = "import_labels_invalid"


class IngestError(Exception):
    """A refusal of one input, with a specific reason code and a PHI-free message."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
