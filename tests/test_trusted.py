"""The one trust check (cc_imds.files.trusted), under each caller's rule: who may own a
file or directory, and who besides its owner may write it, as root and as another user."""

from __future__ import annotations

import os
import stat
from typing import Optional

import pytest

from cc_imds.files import trusted
from cc_imds.files.trusted import (
    DROPINS,
    LOCK_DIR,
    ON_THE_WAY_TO_DROPINS,
    RUN_DIR_LOCK,
    RUN_STATE,
    VALIDATION_CACHE,
    Policy,
    untrusted,
)

USER, OTHER = 1000, 65534


def info(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, uid, 0, 0, 0, 0))


# (policy, running as, owner, mode) -> the reason, or None when trusted
CASES = [
    # the lock in RUN_DIR: root's alone, whoever runs, sticky or not
    (RUN_DIR_LOCK, 0, 0, 0o755, None),
    (RUN_DIR_LOCK, USER, 0, 0o755, None),
    (RUN_DIR_LOCK, USER, USER, 0o700, f"owned by uid {USER}, not root"),
    (RUN_DIR_LOCK, 0, 0, 0o1777, "writable by group and others (mode 1777), not only by its owner"),
    # any other lock directory: root's or the user's; writable by others only if sticky
    (LOCK_DIR, USER, USER, 0o700, None),
    (LOCK_DIR, USER, 0, 0o1777, None),
    (LOCK_DIR, 0, 0, 0o1777, None),
    (LOCK_DIR, 0, OTHER, 0o755, f"owned by uid {OTHER}, not root"),
    (LOCK_DIR, USER, OTHER, 0o1777, f"owned by uid {OTHER}, not root or uid {USER}"),
    (LOCK_DIR, USER, USER, 0o770, "writable by group (mode 0770), not only by its owner"),
    # the run directory: root's alone as root; not checked for another user's own run
    (RUN_STATE, 0, 0, 0o755, None),
    (RUN_STATE, 0, OTHER, 0o755, f"owned by uid {OTHER}, not root"),
    (RUN_STATE, 0, 0, 0o775, "writable by group (mode 0775), not only by its owner"),
    (RUN_STATE, USER, OTHER, 0o777, None),
    # the validation cache: the running user's alone
    (VALIDATION_CACHE, 0, 0, 0o700, None),
    (VALIDATION_CACHE, USER, USER, 0o700, None),
    (VALIDATION_CACHE, USER, 0, 0o700, f"owned by uid 0, not uid {USER}"),
    (VALIDATION_CACHE, 0, 0, 0o1777, "writable by group and others (mode 1777), not only by its owner"),
    # drop-ins: root's alone as root; root's or the user's as the user, whose group is their business
    (DROPINS, 0, 0, 0o644, None),
    (DROPINS, 0, USER, 0o644, f"owned by uid {USER}, not root"),
    (DROPINS, 0, 0, 0o664, "writable by group (mode 0664), not only by its owner"),
    (DROPINS, 0, 0, 0o1777, "writable by group and others (mode 1777), not only by its owner"),
    (DROPINS, USER, USER, 0o664, None),
    (DROPINS, USER, USER, 0o666, "writable by group and others (mode 0666), not only by its owner"),
    # on the way to them: a sticky directory root owns (/tmp) may be writable by others
    (ON_THE_WAY_TO_DROPINS, 0, 0, 0o1777, None),
    (ON_THE_WAY_TO_DROPINS, 0, 0, 0o777, "writable by group and others (mode 0777), not only by its owner"),
    (ON_THE_WAY_TO_DROPINS, USER, USER, 0o1777, "writable by group and others (mode 1777), not only by its owner"),
    (ON_THE_WAY_TO_DROPINS, USER, 0, 0o1777, None),
]


@pytest.mark.parametrize(("policy", "euid", "owner", "mode", "reason"), CASES)
def test_each_callers_rule(monkeypatch: pytest.MonkeyPatch, policy: Policy, euid: int, owner: int, mode: int,
                           reason: Optional[str]) -> None:
    monkeypatch.setattr(trusted.os, "geteuid", lambda: euid)
    assert untrusted(info(owner, mode), policy) == reason
