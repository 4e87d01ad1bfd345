"""Instance event notices: what IMDS serves for an event, split into notices with an identity.

A notice is identified by its content: the same notice polled twice is one notice, and a
changed one (a spot notice whose action changes, maintenance rescheduled) is a new one.
`meta-data/events/maintenance/scheduled` is a list: each entry is a notice of its own.

The Auto Scaling lifecycle is not a notice but a state (`InService`, `Warmed:Stopped`...):
a transition is a state other than the one last acted on (watch/lifecycle.py keeps that),
and it is handed to its commands as a notice, so they get what event commands get.
Pure: bytes in, notices out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import ImdsError
from ..imds.autoscaling import LIFECYCLE_PATH, WARMED
from ..jsontext import JsonRefused, parse

LIFECYCLE = "lifecycle"
EVENT_PATHS = {
    "spot-interruption": "meta-data/spot/instance-action",
    "rebalance-recommendation": "meta-data/events/recommendations/rebalance",
    "scheduled-maintenance": "meta-data/events/maintenance/scheduled",
    LIFECYCLE: LIFECYCLE_PATH,
}
WARMED_ANY = WARMED + "*"  # in a declaration's `states`: every warm-pool state
# A state IMDS may add later is still a state, but only text shaped like one: it is logged,
# shown by status and put in a command's environment.
_STATE_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9:_-]{0,63}")
ENV_PREFIX = "CC_IMDS_"
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_MAX_FIELD = 4096  # bytes: a longer field is left to the full notice (stdin, CC_IMDS_NOTICE)
_MAX_NOTICE_VARIABLE = 64 * 1024  # bytes, within Linux's 128 KiB for one environment string
MAX_FIELDS = 32  # a notice has a handful; what is beyond is left to the full notice, so exec never fails (E2BIG)
_OWN_FIELDS = frozenset({"ID"})  # CC_IMDS_NOTICE_ID is the notice's identity, never a field of it


@dataclass(frozen=True)
class Notice:
    event: str
    path: str
    id: str  # a digest of the canonical content
    text: str  # the notice as JSON text (or the raw text when IMDS served something else)
    fields: Mapping[str, str]  # its top-level scalar fields, for the command's environment


def _canonical(item: Any) -> str:
    return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256_hex(data: bytes) -> str:
    """SHA-256 from Python's own implementation when it has one: hashlib would load OpenSSL's
    libcrypto into the watcher (3.5 MiB resident, for good) for a digest of a few hundred
    bytes. The module's name changed in 3.12; a Python built without it uses hashlib's."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # Python 3.9 to 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]  # 3.12 on
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    return str(sha256(data).hexdigest())


def _notice(event: str, path: str, item: Any, text: str) -> Notice:
    digest = _sha256_hex(_canonical(item).encode("utf-8"))[:16]
    fields: Dict[str, str] = {}
    if isinstance(item, dict):
        # Names that become one variable (`action` and `Action`) are ambiguous: neither is set.
        names: Dict[str, List[str]] = {}
        for key in item:
            names.setdefault(str(key).upper(), []).append(str(key))
        for key, value in item.items():
            scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
            upper = str(key).upper()
            if scalar and _FIELD_NAME.fullmatch(str(key)) and upper not in _OWN_FIELDS and len(names[upper]) == 1:
                shown = str(value)
                if _utf8_size(shown) <= _MAX_FIELD and "\0" not in shown:
                    fields[str(key)] = shown
                    if len(fields) == MAX_FIELDS:
                        break
    return Notice(event, path, digest, text, fields)


def notices(event: str, path: str, body: bytes) -> List[Notice]:
    """The notices in one answer of IMDS for `path`. An empty body or list means none."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        document = parse(text)
    except JsonRefused as exc:
        raise ImdsError(f"/latest/{path}", f"refused: {exc}") from None
    except ValueError:
        return [_notice(event, path, text, text)]
    items = document if isinstance(document, list) else [document]
    return [_notice(event, path, item, json.dumps(item, indent=2, ensure_ascii=False)) for item in items]


def notice_env(notice: Notice) -> Dict[str, str]:
    """The environment a command gets for a notice (the notice itself also comes on stdin).

    CC_IMDS_EVENT=spot-interruption, CC_IMDS_NOTICE='{"action": ...}', CC_IMDS_NOTICE_ID,
    CC_IMDS_IMDS_PATH, and one CC_IMDS_NOTICE_<FIELD> per top-level field
    (CC_IMDS_NOTICE_ACTION=terminate, CC_IMDS_NOTICE_TIME=2026-...).
    """
    env = {
        f"{ENV_PREFIX}EVENT": notice.event,
        f"{ENV_PREFIX}IMDS_PATH": notice.path,
        f"{ENV_PREFIX}NOTICE_ID": notice.id,
    }
    if _utf8_size(notice.text) <= _MAX_NOTICE_VARIABLE and "\0" not in notice.text:
        env[f"{ENV_PREFIX}NOTICE"] = notice.text
    for key, value in notice.fields.items():
        env[f"{ENV_PREFIX}NOTICE_{key.upper()}"] = value
    return env


def _utf8_size(text: str) -> int:
    """Bytes in the environment: what Linux's limit counts, not characters (4 for one emoji)."""
    return len(text.encode("utf-8", "surrogatepass"))


# -- Auto Scaling lifecycle -------------------------------------------------------------------
def lifecycle_state(body: bytes) -> str:
    """The state IMDS serves at LIFECYCLE_PATH (`InService`, `Warmed:Stopped`...). Anything
    that is not shaped like a state name is a failed poll, never a transition."""
    text = body.decode("utf-8", "replace").strip()
    if not _STATE_TEXT.fullmatch(text):
        raise ImdsError(f"/latest/{LIFECYCLE_PATH}", f"not a lifecycle state: {text[:80]!r}")
    return text


def state_chosen(states: Sequence[str], state: str) -> bool:
    """Does a command declared for `states` run on a transition to `state`? No states: every
    state; `Warmed:*`: every warm-pool state."""
    if not states:
        return True
    return state in states or (WARMED_ANY in states and state.startswith(WARMED))


def transition_notice(previous: Optional[str], state: str, instance_id: str, seen: str) -> Notice:
    """A transition as a notice, so its commands get what event commands get: the JSON on
    stdin and in CC_IMDS_NOTICE, and CC_IMDS_NOTICE_STATE, CC_IMDS_NOTICE_PREVIOUS (empty
    on the instance's first observation), CC_IMDS_NOTICE_INSTANCEID and CC_IMDS_NOTICE_TIME."""
    item = {"state": state, "previous": previous, "instanceId": instance_id, "time": seen}
    notice = _notice(LIFECYCLE, LIFECYCLE_PATH, item, json.dumps(item, indent=2, ensure_ascii=False))
    return Notice(notice.event, notice.path, notice.id, notice.text, {**notice.fields, "previous": previous or ""})
