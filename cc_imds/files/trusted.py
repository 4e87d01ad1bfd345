"""Whether a file or directory may be trusted: the one check, and every caller's rule.

A file tells a root run what to do (a drop-in, a remembered validation, the watcher's
state) or where to serialise (the lock): whoever can replace it, or the directory holding
it, can steer that run. So it is trusted only if a trusted user owns it and nobody else
can write it. Who counts differs by caller; each rule is one Policy below, and nowhere else:

  RUN_DIR_LOCK           the lock's directory when it is RUN_DIR (files/lock.py): root owns
                         it, and neither group nor others may write it, whoever runs.
  LOCK_DIR               any other lock directory (files/lock.py): root or the running user
                         owns it; group or others may write it only if it is sticky (/tmp).
  RUN_STATE              the run directory and every file read from it (watch/rundir.py):
                         as root, root owns it and neither group nor others may write it;
                         a run as another user (tests, rehearsals) trusts its own files.
  VALIDATION_CACHE       the validation cache and its entries (declaration/cache.py): the
                         running user owns them, and neither group nor others may write them.
  DROPINS                drop-ins and their directory (declaration/dropins.py): as root,
                         root owns them and neither group nor others may write them; as
                         another user, root or that user owns them and others may not write
                         them (a user's own group is their business).
  ON_THE_WAY_TO_DROPINS  every directory from / to the drop-ins: as DROPINS, except that a
                         sticky directory root owns (/tmp) may be writable by others.

A run as another user (image builds, tests) can write nothing its user could not, so that
user stands beside root where a rule says so.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple, Optional, Tuple

# Who may own (the running user is read at each check).
ROOT, ROOT_OR_USER, USER = "root", "root or the user", "the user"
# The write bits nobody but the owner may hold.
GROUP_AND_OTHERS, OTHERS = 0o022, 0o002


class Rule(NamedTuple):
    owners: str  # ROOT, ROOT_OR_USER or USER
    writers: int  # GROUP_AND_OTHERS or OTHERS
    sticky: Optional[str] = None  # a sticky directory these own may be writable by others anyway


class Policy(NamedTuple):
    as_root: Rule
    as_user: Optional[Rule]  # None: a run as another user trusts what it finds


_ROOT_ALONE = Rule(ROOT, GROUP_AND_OTHERS)
_SHARED_OR_OWN = Rule(ROOT_OR_USER, GROUP_AND_OTHERS, sticky=ROOT_OR_USER)
_USER_ALONE = Rule(USER, GROUP_AND_OTHERS)

# Root's run-time state (the lock, the watcher's files, the validation cache): created by root
# 0755, and trusted only if only root can write it.
RUN_DIR = "/run/cc-imds"

RUN_DIR_LOCK = Policy(as_root=_ROOT_ALONE, as_user=_ROOT_ALONE)
LOCK_DIR = Policy(as_root=_SHARED_OR_OWN, as_user=_SHARED_OR_OWN)
RUN_STATE = Policy(as_root=_ROOT_ALONE, as_user=None)
VALIDATION_CACHE = Policy(as_root=_USER_ALONE, as_user=_USER_ALONE)
DROPINS = Policy(as_root=_ROOT_ALONE, as_user=Rule(ROOT_OR_USER, OTHERS))
ON_THE_WAY_TO_DROPINS = Policy(as_root=Rule(ROOT, GROUP_AND_OTHERS, sticky=ROOT),
                               as_user=Rule(ROOT_OR_USER, OTHERS, sticky=ROOT))


def untrusted(info: os.stat_result, policy: Policy) -> Optional[str]:
    """Why the file or directory `info` describes must not be trusted under `policy` (for
    the running user), or None: "owned by uid N, not root", "writable by group (mode
    0775), not only by its owner"."""
    euid = os.geteuid()
    rule = policy.as_root if euid == 0 else policy.as_user
    if rule is None:
        return None
    if info.st_uid not in _uids(rule.owners, euid):
        return f"owned by uid {info.st_uid}, not {_who(rule.owners, euid)}"
    mode = stat.S_IMODE(info.st_mode)
    sticky = rule.sticky is not None and bool(mode & stat.S_ISVTX) and info.st_uid in _uids(rule.sticky, euid)
    if mode & rule.writers and not sticky:
        writers = " and ".join(who for who, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)
        return f"writable by {writers} (mode {mode:04o}), not only by its owner"
    return None


def _uids(owners: str, euid: int) -> Tuple[int, ...]:
    return {ROOT: (0,), ROOT_OR_USER: (0, euid), USER: (euid,)}[owners]


def _who(owners: str, euid: int) -> str:
    return " or ".join(dict.fromkeys("root" if uid == 0 else f"uid {uid}" for uid in _uids(owners, euid)))
