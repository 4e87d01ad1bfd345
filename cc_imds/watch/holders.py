"""Who can read a file the watcher wrote: what `cc-imds status` shows for credential outputs."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Optional


def holder(path: str) -> Optional[str]:
    """`user:group mode` of `path` as it is now (`app:app 0640`), by name where the system
    knows one; None if it cannot be read."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{user}:{group} {stat.S_IMODE(info.st_mode):04o}"
