"""A float32 vector column: pgvector's ``vector`` on PostgreSQL, packed bytes elsewhere.

On PostgreSQL the column is searchable by pgvector (HNSW indexes, ``<=>`` cosine distance); on
SQLite it is the raw little-endian float32 bytes and search goes through the embedded index.
Either way the application sees a ``numpy.float32`` array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class VectorColumn(TypeDecorator[npt.NDArray[np.float32]]):
    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(VECTOR())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        array = np.asarray(value, dtype=np.float32).reshape(-1)
        if dialect.name == "postgresql":
            return array  # pgvector's own bind processor (the dialect impl) encodes it
        return array.astype("<f4").tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> npt.NDArray[np.float32] | None:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return np.asarray(value, dtype=np.float32)  # already parsed by pgvector
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
