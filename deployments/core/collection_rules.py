"""What the Ingress and the Collections stage exchange, and what a collection request may
name, without LanceDB: the Ingress refuses a bad name or filter before it embeds anything,
and unpickles the store's answers and errors without importing the store."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

COLLECTIONS_URI_ENV_VAR = "SIGLIP_COLLECTIONS_URI"
NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
FILTER_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_METADATA_BYTES = 16_384  # one item's metadata, as JSON
# Schema metadata of a collection's table and of a bulk job's Parquet files: which model and
# dtype made the vectors, so that another model's are never mixed in.
MODEL_KEY, FINGERPRINT_KEY = b"siglip.model", b"siglip.fingerprint"


class CollectionError(Exception):
    """A request the store refuses: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def __reduce__(self):  # crosses from the store's replica to the Ingress's by pickle
        return CollectionError, (self.status, self.message, self.code, self.param)


@dataclass(frozen=True)
class Model:
    """The model whose vectors a collection holds."""

    name: str
    fingerprint: str
    dimensions: int


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    count: int
    dimensions: int
    model: str
    indexed: bool


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    metadata: dict | None


def resolve_uri(configured: str) -> str:
    """SIGLIP_COLLECTIONS_URI, else the configured URI; a local folder made absolute."""
    uri = os.environ.get(COLLECTIONS_URI_ENV_VAR) or configured
    return uri if "://" in uri else os.path.abspath(uri)


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise CollectionError(400, f"'{name[:80]}' is not a collection name: use 1 to 64 of "
                                   "a-z, 0-9, _ and -.", "invalid_collection_name", "name")


def filter_clause(conditions: dict[str, Any]) -> str | None:
    """SQL for "metadata[key] equals value" for every key, compared as JSON text. Keys are
    checked against FILTER_KEY and values are JSON-encoded then quoted, so nothing a client
    sends becomes SQL."""
    clauses = []
    for key, value in conditions.items():
        if not FILTER_KEY.match(key):
            raise CollectionError(400, f"filter key '{key[:80]}' must be 1 to 64 letters, digits "
                                       "or _, not starting with a digit.", "invalid_filter", "filter")
        if value is None or isinstance(value, (dict, list)):
            raise CollectionError(400, f"filter.{key} must be a string, number or boolean.",
                                  "invalid_filter", f"filter.{key}")
        literal = json.dumps(value).replace("'", "''")
        clauses.append(f"json_extract(metadata, '$.{key}') = '{literal}'")
    return " AND ".join(clauses) or None
