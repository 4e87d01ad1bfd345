"""What the boot run hands to `cc-imds watch`, under /run/cc-imds (a tmpfs: every boot
starts without it).

When some declaration asks for a refresh or an event, the boot run saves this boot's `imds:`
cloud-config key (root only) and writes the marker that the `cc-imds-watch.path` unit
waits for, so systemd starts the watcher in the same boot, after cloud-config.service,
without anyone calling systemctl. When none does, it leaves nothing, and no process runs.

The watcher reads the saved key with the drop-ins, in the boot run's order, so it keeps
the boot run's own declarations true. Reading cloud-init's files instead would need
cloud-init's merging rules and its datasource cache; the saved key is exactly what the
module was given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..declaration.build import Declaration
from ..logs import std_logger
from . import rundir
from .schedule import WatchPlan, plan

LOG = std_logger(__name__)


def hand_off(cloud_config: Any, declaration: Optional[Declaration], directory: Optional[Path] = None) -> WatchPlan:
    """After the boot run: leave this boot's `imds:` key and the marker for the watcher when
    the declaration needs one; remove them when not, or when it was invalid (None). Raises
    RunDirError when /run/cc-imds cannot be used."""
    directory = directory or rundir.run_dir()
    watch = plan(declaration) if declaration is not None else WatchPlan((), frozenset(), ())
    if watch.idle:
        _withdraw(directory)
        return watch
    rundir.ensure(directory)
    saved = directory / rundir.CLOUD_CONFIG
    if cloud_config is None:
        rundir.remove(saved)
    else:
        try:
            text = json.dumps(cloud_config, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise rundir.RunDirError(f"{saved}: the imds: key cannot be saved for the watcher: {exc}") from None
        rundir.write_atomic(saved, text.encode("utf-8") + b"\n", 0o600)
    rundir.write_atomic(directory / rundir.MARKER, describe(watch).encode("utf-8"), 0o644)
    return watch


def _withdraw(directory: Path) -> None:
    if directory.is_dir():
        rundir.remove(directory / rundir.MARKER)
        rundir.remove(directory / rundir.CLOUD_CONFIG)


def describe(watch: WatchPlan) -> str:
    """The marker's text: why a watcher is needed, for whoever looks."""
    lines = [f"refresh {g.path}" for g in watch.refreshing]
    lines += [f"event {e.event}" for e in watch.events]
    lines += [f"rewrite {path}" for path in sorted(watch.outputs)]
    return "\n".join(lines) + "\n"


def saved_cloud_config(directory: Optional[Path] = None) -> Any:
    """The `imds:` key of this boot's cloud-config as the boot run saved it, or None."""
    return rundir.read_json((directory or rundir.run_dir()) / rundir.CLOUD_CONFIG)


def watcher_needed(directory: Optional[Path] = None) -> bool:
    return ((directory or rundir.run_dir()) / rundir.MARKER).exists()
