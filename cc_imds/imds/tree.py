"""An in-memory IMDS tree: what the emulator serves and what `plan --metadata` reads.

Leaves are stored by path relative to the API version (`meta-data/instance-id`,
`dynamic/instance-identity/document`, `user-data`). Directory listings are derived
from the leaves, the way IMDS presents them: one entry per line, a trailing `/`
on subdirectories.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import CcImdsError
from ..jsontext import JsonRefused, parse
from ..untrusted import InputError, read_text

TAGS_PREFIX = "meta-data/tags/instance/"
MAX_TREE_BYTES = 64 * 1024 * 1024  # IMDS bodies are at most 4 MiB each (the client's limit)

_AEMM_SECTIONS = ("metadata", "dynamic", "userdata")


class TreeError(CcImdsError):
    """A metadata tree file cannot be read."""


class MetadataTree:
    """Leaves by path. Safe to change while the emulator serves it (tags edited, credentials
    rotated, a spot notice appearing): every read and change holds one lock."""

    def __init__(self, leaves: Mapping[str, bytes], *, tags_enabled: bool = True) -> None:
        self._leaves: Dict[str, bytes] = dict(leaves)
        self._lock = threading.Lock()
        self.tags_enabled = tags_enabled

    def leaves(self) -> Dict[str, bytes]:
        with self._lock:
            return dict(self._leaves)

    def set(self, path: str, body: bytes) -> None:
        """Add or replace the leaf at `path` (relative to the API version, like lookup)."""
        leaf = path.strip("/")
        if not leaf:
            raise TreeError("an empty path is not a leaf")
        with self._lock:
            self._leaves[leaf] = body

    def replace(self, other: MetadataTree) -> int:
        """Serve `other`'s leaves instead of these, all at once (a tree file reloaded); whether
        tags are served stays as it is. Returns how many leaves there are now."""
        leaves = other.leaves()
        with self._lock:
            self._leaves = leaves
        return len(leaves)

    def delete(self, path: str) -> int:
        """Remove the leaf at `path`, or every leaf under it when it is a directory.
        Returns how many leaves went."""
        prefix = path.strip("/")
        with self._lock:
            gone = [p for p in self._leaves if p == prefix or p.startswith(prefix + "/")]
            for leaf in gone:
                del self._leaves[leaf]
        return len(gone)

    def _visible(self, path: str) -> bool:
        # With InstanceMetadataTags off, the whole tags/instance subtree is a 404.
        return self.tags_enabled or not (path.rstrip("/") + "/").startswith(TAGS_PREFIX)

    def lookup(self, path: str) -> Optional[bytes]:
        """The body IMDS would return for `path`, or None for a 404.

        A trailing slash on a leaf is tolerated, as IMDS does.
        """
        path = path.lstrip("/")
        if not self._visible(path):
            return None
        leaf = path[:-1] if path.endswith("/") else path
        with self._lock:
            body = self._leaves.get(leaf)
        if body is not None:
            return body
        entries = self.listing(path)
        if entries is None:
            return None
        return "\n".join(entries).encode()

    def listing(self, path: str) -> Optional[List[str]]:
        """Entries of the directory at `path` (with or without trailing slash), or None."""
        prefix = path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        entries: Dict[str, None] = {}
        with self._lock:
            leaves = sorted(self._leaves)
        for leaf in leaves:
            if leaf.startswith(prefix) and self._visible(leaf):
                rest = leaf[len(prefix):]
                head, sep, _ = rest.partition("/")
                entries[head + sep] = None
        return list(entries) or None


def as_leaf(value: Any, where: str) -> bytes:
    """A tree document's value as the bytes IMDS would serve (see `tree_from_document`)."""
    return _as_bytes(value, where)


def _as_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"$base64"}:
        try:
            return base64.b64decode(value["$base64"], validate=True)
        except (TypeError, ValueError) as exc:
            raise TreeError(f"{where}: invalid $base64 value: {exc}") from None
    if isinstance(value, (dict, list)):
        # IMDS serves JSON documents pretty-printed, as text/plain.
        return json.dumps(value, indent=2).encode("utf-8")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode()
    raise TreeError(f"{where}: unsupported value of type {type(value).__name__}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TreeError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _from_aemm(document: Mapping[str, Any]) -> Dict[str, bytes]:
    leaves: Dict[str, bytes] = {}
    for section in _AEMM_SECTIONS:
        part = _mapping(document.get(section), section)
        paths = _mapping(part.get("paths"), f"{section}.paths")
        values = _mapping(part.get("values"), f"{section}.values")
        for key, url_path in paths.items():
            if not isinstance(url_path, str):
                raise TreeError(f"{section}.paths.{key}: expected a URL path string, got {type(url_path).__name__}")
            value = values.get(key)
            if value is None:
                continue  # absent in IMDS: a 404
            rel = url_path.split("/latest/", 1)[-1].strip("/")
            if section == "userdata" and isinstance(value, str):
                leaves[rel] = _base64(value, f"{section}.values.{key}")
            else:
                leaves[rel] = _as_bytes(value, f"{section}.values.{key}")
    return leaves


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise TreeError(f"{where}: invalid base64: {exc}") from None


def _from_flat(document: Mapping[str, Any]) -> Dict[str, bytes]:
    leaves: Dict[str, bytes] = {}
    for path, value in document.items():
        rel = path.split("/latest/", 1)[-1].strip("/")
        if not rel:
            raise TreeError(f"{path!r}: empty path")
        if value is None:
            continue
        leaves[rel] = _as_bytes(value, path)
    return leaves


def tree_from_document(document: Any, *, tags_enabled: bool = True) -> MetadataTree:
    """Build a tree from a flat `{path: value}` map or the AEMM defaults format."""
    if not isinstance(document, dict):
        raise TreeError("a metadata tree must be a JSON object")
    metadata = document.get("metadata")
    try:
        if isinstance(metadata, dict) and "paths" in metadata:
            return MetadataTree(_from_aemm(document), tags_enabled=tags_enabled)
        return MetadataTree(_from_flat(document), tags_enabled=tags_enabled)
    except RecursionError:  # json.dumps of a deeply nested value
        raise TreeError("a value is nested too deeply") from None


def load_tree(path: Optional[str] = None, *, tags_enabled: bool = True) -> MetadataTree:
    """Load a tree from a JSON file, or the bundled default tree when `path` is None.

    Bounded like every input: a regular file (never a FIFO or a device) of at most
    MAX_TREE_BYTES, nested at most as deep as the JSON parser allows."""
    source = Path(path) if path else default_tree_path()
    try:
        document = parse(read_text(source, MAX_TREE_BYTES), MAX_TREE_BYTES)
    except InputError as exc:
        raise TreeError(str(exc)) from None
    except JsonRefused as exc:
        raise TreeError(f"{source}: refused: {exc}") from None
    except ValueError as exc:
        raise TreeError(f"{source}: not valid JSON: {exc}") from None
    try:
        return tree_from_document(document, tags_enabled=tags_enabled)
    except TreeError as exc:
        raise TreeError(f"{source}: {exc}") from None


def default_tree_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "default-tree.json"

