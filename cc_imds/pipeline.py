"""The one straight path: sources -> declaration -> values -> outputs -> files.

`cc_imds.handle` (cloud-init) and `cc-imds apply` both call `apply`; `cc-imds plan`
calls `preview`, which stops before writing and redacts secrets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .client import ClientSettings, ImdsClient, candidate_urls, choose_endpoint
from .config import CONNECTION_KEYS, Declaration, SourceDocument, build_declaration, documents_from_dir
from .deadline import Deadline
from .errors import DeclarationError
from .render import Output, render
from .resolve import TreeSource, Values, resolve
from .tree import MetadataTree
from .write import Change, default_lock_path, write_outputs

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    endpoint: Optional[str] = None  # overrides everything (CLI --endpoint)
    root: str = "/"
    lock_path: str = field(default_factory=default_lock_path)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def gather(
    cloud_config: Any = None,
    conf_dir: Optional[str] = None,
    documents: Sequence[SourceDocument] = (),
) -> List[SourceDocument]:
    """Drop-ins first (lexical order), then explicit documents, then cloud-config:
    later sources win for connection settings."""
    docs = documents_from_dir(Path(conf_dir)) if conf_dir else []
    docs.extend(documents)
    if cloud_config is not None:
        docs.append(SourceDocument("cloud-config", "imds", cloud_config))
    return docs


def client_settings(declaration: Declaration, options: RunOptions) -> ClientSettings:
    settings: Dict[str, Any] = {k: declaration.settings[k] for k in CONNECTION_KEYS if k in declaration.settings}
    endpoint, origin = choose_endpoint(options.endpoint, settings.pop("endpoint", None), options.environ)
    candidate_urls(endpoint)  # validate early, with a clear message
    LOG.debug("IMDS endpoint %s (from %s)", endpoint, origin)
    return ClientSettings(endpoint=endpoint, **settings)


def resolve_values(declaration: Declaration, options: RunOptions, tree: Optional[MetadataTree] = None) -> Values:
    if tree is not None:
        return resolve(declaration, TreeSource(tree))
    with ImdsClient(client_settings(declaration, options)) as client:
        return resolve(declaration, client)


def run_deadline(declaration: Declaration) -> Deadline:
    """The run's one deadline, started now: it bounds waiting for the lock too."""
    try:
        return Deadline(float(declaration.settings.get("deadline", ClientSettings.deadline)))
    except ValueError as exc:
        raise DeclarationError([f"deadline: {exc}"]) from None


def apply(docs: Sequence[SourceDocument], options: RunOptions) -> List[Change]:
    return apply_declaration(build_declaration(docs, remember=True), options)


def apply_declaration(declaration: Declaration, options: RunOptions) -> List[Change]:
    deadline = run_deadline(declaration)
    values = resolve_values(declaration, options)
    outputs = render(declaration, values)
    changes = write_outputs(outputs, options.root, options.lock_path, deadline=deadline)
    for change in changes:
        really = f" -> {change.real_path}" if change.real_path else ""
        LOG.info("%s %s%s (mode %04o)", change.action, change.path, really, change.mode)
    return changes


def preview(
    docs: Sequence[SourceDocument], options: RunOptions, tree: Optional[MetadataTree] = None
) -> List[Output]:
    declaration = build_declaration(docs)
    values = resolve_values(declaration, options, tree)
    render(declaration, values)  # the real rendering must succeed too (formats, sandbox)
    return render(declaration, values, redact=True)
