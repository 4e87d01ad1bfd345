"""cc_imds: a cloud-init config module that renders EC2 instance metadata (IMDSv2)
into files and environment files, from an `imds:` declaration in cloud-config or
files in /etc/cc-imds/conf.d/.

cloud-init imports this module at the start of every stage, and an import error
would abort every module of the stage, so only the standard library is imported
here. Everything else is imported inside `handle`.
"""

from __future__ import annotations

import os

from .logs import get_logger, shown_lines
from .version import __version__ as __version__

TYPE_CHECKING = False  # not typing's: `cc-imds get` imports this package and should not pay for typing
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Tuple

LOG = get_logger(__name__)

# No `activate_by_schema_keys`: declarations may come from files, not only from the
# `imds` key, so the module must run and decide for itself (FACTS §2).
meta: Dict[str, Any] = {
    "id": "cc_imds",
    "name": "IMDS values",
    "title": "Render EC2 instance metadata (IMDSv2) into files and environment files",
    "description": __doc__,
    "distros": ["all"],
    # Public IPs and tags change across stop/start with the same instance id, and
    # unchanged files are left alone, so running at every boot is cheap and right.
    "frequency": "always",
    "examples": [],
}


def _arguments(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tuple[str, Mapping[str, Any]]:
    """cloud-init 22.x passes (name, cfg, cloud, log, args) positionally; 23.2+ passes
    keywords. `*args, **kwargs` accepts both without the deprecated five-argument path."""
    name = kwargs.get("name", args[0] if args else "imds")
    cfg = kwargs.get("cfg", args[1] if len(args) > 1 else {})
    return str(name), cfg or {}


def _has_dropins(conf_dir: str) -> bool:
    from .declaration.dropins import is_dropin

    try:
        return any(is_dropin(entry) for entry in os.listdir(conf_dir))
    except OSError:
        return False


def handle(*args: Any, **kwargs: Any) -> None:
    name, cfg = _arguments(args, kwargs)
    from .declaration.dropins import CONF_DIR_ENV, DEFAULT_CONF_DIR

    conf_dir = os.environ.get(CONF_DIR_ENV, DEFAULT_CONF_DIR)
    if "imds" not in cfg and not _has_dropins(conf_dir):
        LOG.debug("Skipping module %s: no `imds` key and no declarations in %s", name, conf_dir)
        return

    from .declaration.build import build_declaration
    from .errors import CcImdsError
    from .pipeline import RunOptions, apply_declaration, gather

    declaration = None
    failure = None
    try:
        declaration = build_declaration(gather(cfg.get("imds"), conf_dir), remember=True)
        changes = apply_declaration(declaration, RunOptions())
    except CcImdsError as exc:
        for line in str(exc).splitlines():
            LOG.error("%s: %s", name, line)
        failure = exc.scrubbed(shown_lines)  # cloud-init logs it too: no control character from outside
    finally:
        _hand_off(name, cfg.get("imds"), declaration)
    if failure is not None:
        raise failure  # outside the handler, so nothing chains the original
    written = sum(1 for c in changes if c.action != "unchanged")
    LOG.info("%s: %d file(s) written, %d unchanged", name, written, len(changes) - written)


def _hand_off(name: str, cloud_config: Any, declaration: Any) -> None:
    """Start `cc-imds watch` in this boot if the declaration needs it, even when this run
    failed (the watcher keeps trying); with no valid declaration, withdraw an earlier run's
    request. Never fails the module: the files are what matters."""
    from .errors import CcImdsError
    from .watch.handoff import hand_off

    try:
        watch = hand_off(cloud_config, declaration)
    except CcImdsError as exc:
        LOG.error("%s: cannot start cc-imds watch: %s", name, exc)
        return
    if not watch.idle:
        LOG.info("%s: cc-imds watch will keep %d output(s) current (cc-imds status shows it)",
                 name, len(watch.outputs))
