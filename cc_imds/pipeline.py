"""The one straight path: sources -> declaration -> values -> outputs -> files.

`cc_imds.handle` (cloud-init) and `cc-imds apply` both call `apply`; `cc-imds plan`
calls `preview`, which stops before writing and redacts secrets.

This is also the one boundary for messages: every error raised while resolving,
rendering or writing leaves through `scrubbed`, which removes every sensitive value,
sensitive default and token from it, in every form it can take (scrub.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TypeVar

from .deadline import Deadline
from .declaration.build import CONNECTION_KEYS, Declaration, SourceDocument, build_declaration, documents_from_dir
from .errors import CcImdsError, DeclarationError
from .files.lock import default_lock_path
from .imds.client import ClientSettings, ImdsClient, candidate_urls, choose_endpoint
from .imds.tree import MetadataTree
from .logs import std_logger
from .outputs.render import Output, render
from .outputs.scrub import Scrubber
from .outputs.write import Change, write_outputs
from .values import TreeSource, Value, Values, resolve

LOG = std_logger(__name__)
T = TypeVar("T")


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


def scrubber_for(
    declaration: Declaration, known: Optional[Mapping[str, Value]] = None, tokens: Iterable[str] = ()
) -> Scrubber:
    """The one scrubber builder: all that no message may show for this declaration. Its
    sensitive defaults, then what `learn` adds. apply and preview build it before resolving
    and learn as they go (resolve_values); the watcher builds it from all it knows for each
    message, so a rotated secret is not kept for the watcher's whole life."""
    scrub = Scrubber(spec.default for spec in declaration.values.values() if spec.sensitive and spec.default)
    learn(scrub, declaration, known, tokens)
    return scrub


def learn(
    scrub: Scrubber, declaration: Declaration, known: Optional[Mapping[str, Value]] = None, tokens: Iterable[str] = ()
) -> None:
    """Add to `scrub` the sensitive ones of the `known` values and the IMDS `tokens` issued."""
    scrub.add(value for name, value in (known or {}).items() if declaration.values[name].sensitive)
    scrub.add(tokens)


def scrubbed(scrub: Scrubber, step: Callable[[], T]) -> T:
    """Run `step`. An error it raises leaves scrubbed: a CcImdsError as a scrubbed copy (no
    traceback, no chained exception); anything else, a defect, keeps its type and traceback
    but not the text it may quote."""
    try:
        return step()
    except CcImdsError as exc:
        failure = exc.scrubbed(scrub)
    except Exception as exc:
        exc.args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in exc.args)
        exc.__cause__ = exc.__context__ = None
        raise
    raise failure  # outside the handler, so nothing chains the original


def resolve_values(
    declaration: Declaration,
    options: RunOptions,
    tree: Optional[MetadataTree] = None,
    scrub: Optional[Scrubber] = None,
    deadline: Optional[Deadline] = None,
) -> Values:
    scrub = scrub if scrub is not None else Scrubber()
    if tree is not None:
        values = resolve(declaration, TreeSource(tree))
    else:
        with ImdsClient(client_settings(declaration, options)) as client:
            try:
                values = resolve(declaration, client, deadline=deadline)
            finally:
                learn(scrub, declaration, tokens=client.issued_tokens())
    learn(scrub, declaration, values.data)
    return values


def run_deadline(declaration: Declaration) -> Deadline:
    """The run's one deadline, started now: it bounds waiting for the lock too."""
    try:
        return Deadline(float(declaration.settings.get("deadline", ClientSettings.deadline)))
    except ValueError as exc:
        raise DeclarationError([f"deadline: {exc}"]) from None


def apply(docs: Sequence[SourceDocument], options: RunOptions) -> List[Change]:
    return apply_declaration(build_declaration(docs, remember=True), options)


def apply_declaration(declaration: Declaration, options: RunOptions) -> List[Change]:
    deadline = run_deadline(declaration)  # one deadline: resolving, rendering, then waiting for the lock
    scrub = scrubber_for(declaration)

    def run() -> List[Change]:
        values = resolve_values(declaration, options, scrub=scrub, deadline=deadline)
        outputs = render(declaration, values, deadline=deadline)
        return write_outputs(outputs, options.root, options.lock_path, deadline=deadline)

    changes = scrubbed(scrub, run)
    for change in changes:
        really = f" -> {change.real_path}" if change.real_path else ""
        LOG.info("%s %s%s (mode %04o)", change.action, change.path, really, change.mode)
    return changes


def preview(
    docs: Sequence[SourceDocument], options: RunOptions, tree: Optional[MetadataTree] = None
) -> List[Output]:
    declaration = build_declaration(docs)
    deadline = run_deadline(declaration)
    scrub = scrubber_for(declaration)

    def run() -> List[Output]:
        values = resolve_values(declaration, options, tree, scrub, deadline)
        render(declaration, values, deadline=deadline)  # the real rendering must succeed too (formats, sandbox)
        shown = render(declaration, values, redact=True, deadline=deadline)
        # Redaction hides what is known to be sensitive; scrubbing also hides a secret that
        # some other value happens to hold.
        return [replace(o, content=scrub(o.content.decode("utf-8")).encode("utf-8")) for o in shown]

    return scrubbed(scrub, run)
