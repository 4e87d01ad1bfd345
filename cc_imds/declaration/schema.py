"""Where the declaration's JSON Schema is, and reading it: packaged beside the code (wheel,
RPM) or at the top of the source tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

SCHEMA_FILE = "cc-imds.schema.json"


def schema_path() -> Path:
    """The schema: packaged beside the code (wheel, RPM), or in the source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "schemas" / SCHEMA_FILE, package.parent / "schemas" / SCHEMA_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_FILE} is not installed beside cc_imds")


def load_schema() -> Dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as handle:
        schema: Dict[str, Any] = json.load(handle)
    return schema
