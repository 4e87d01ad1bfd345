"""The Auto Scaling lifecycle state last acted on, remembered across watcher restarts and reboots.

A transition is a change of `meta-data/autoscaling/target-lifecycle-state`, which Auto
Scaling makes whether or not the instance runs: a warm-pool instance is stopped in
`Warmed:Stopped` and started again in `InService`, and that transition happened while it
was stopped. So the state acted on last is kept on disk, in STATE_DIR (not in the run
directory, a tmpfs that a reboot empties), and a transition is a state different from it:

- a watcher restarted in the same boot sees the state it remembers: nothing runs again;
- a later boot into another state (`Warmed:Stopped`, then `InService`) runs that state's
  commands once, with the state remembered from the earlier boot as the previous one;
- a reboot that changes nothing (an `InService` instance rebooted) runs nothing: Auto
  Scaling made no transition, and has no lifecycle action waiting for a command;
- the instance's first observation, with nothing remembered, is a transition from none:
  `InService` at the first boot runs its commands (register, complete the launch hook).

The record names the instance it belongs to: an image made from an instance that ran the
watcher carries its file, and an instance launched from that image must not take the other
instance's state for its own. The directory and the file are trusted only if root owns them
and nobody else can write them (when running as root), as the run directory is; a record
that cannot be trusted or read is ignored, logged, and the next observation counts as the
first: a command may run once more, never be skipped because someone planted a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from ..logs import std_logger
from . import rundir

LOG = std_logger(__name__)

STATE_DIR = "/var/lib/cc-imds"
STATE_DIR_ENV = "CC_IMDS_STATE_DIR"  # relocates the persistent state (tests, unusual layouts)
MEMORY = "lifecycle.json"
_MAX_TEXT = 256  # an instance id or a state is far shorter: a longer one is not ours


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, STATE_DIR))


@dataclass(frozen=True)
class Memory:
    """The lifecycle state last acted on, on which instance, and when it was seen."""

    instance_id: str
    state: str
    seen: str  # ISO 8601 UTC

    def as_document(self) -> Dict[str, str]:
        return {"instance_id": self.instance_id, "state": self.state, "seen": self.seen}


def recall(directory: Path, instance_id: str) -> Optional[Memory]:
    """What was remembered for this instance, or None: nothing remembered, a record of
    another instance (an image made from it), or one that cannot be trusted (logged)."""
    path = directory / MEMORY
    try:
        if not directory.exists():
            return None
        rundir.check_dir(directory)
        document = rundir.read_json(path)
    except rundir.RunDirError as exc:
        LOG.error("lifecycle: %s; the next lifecycle state seen counts as a transition", exc)
        return None
    if document is None:
        return None
    fields = ("instance_id", "state", "seen")
    if not isinstance(document, dict) or not all(
            isinstance(document.get(f), str) and 0 < len(document[f]) <= _MAX_TEXT for f in fields):
        LOG.error("lifecycle: %s: not a record of a lifecycle state; the next state seen counts as a transition",
                  path)
        return None
    if document["instance_id"] != instance_id:
        LOG.info("lifecycle: %s belongs to another instance (an image made from it?): not this instance's state",
                 path)
        return None
    return Memory(document["instance_id"], document["state"], document["seen"])


def remember(directory: Path, memory: Memory) -> None:
    """Keep `memory` (atomically: a crash leaves the old record or the new one). Raises
    rundir.RunDirError when it cannot."""
    rundir.ensure(directory)
    rundir.write_json(directory / MEMORY, memory.as_document(), 0o644)
