from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from clinic.store.blobs import (
    TEMP_PREFIX,
    BlobStore,
    decode_unit_image,
    encode_unit_image,
)


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert blobs.put(b"hello") == digest
    assert blobs.get(digest) == b"hello"
    assert blobs.iter_hashes() == [digest]


def test_arrays_round_trip_without_pickle(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    signal = np.random.default_rng(0).normal(size=(12, 5000)).astype(np.float32)
    restored = blobs.get_array(blobs.put_array(signal))
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, signal)


def test_unit_image_quantisation_error_is_tiny() -> None:
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    restored = decode_unit_image(encode_unit_image(image))
    assert np.abs(restored - image).max() <= 0.5 / 65535 + 1e-7


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    dead = folder / f"{TEMP_PREFIX}999999999-abc"
    alive = folder / f"{TEMP_PREFIX}{os.getpid()}-abc"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"in progress")
    assert blobs.remove_stale_temporaries() == 1
    assert not dead.exists()
    assert alive.exists()
