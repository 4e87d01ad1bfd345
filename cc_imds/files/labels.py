"""SELinux labels for the files cc-imds creates: the context the policy's file_contexts gives
their final path, as restorecon (or `setfiles -r ROOT` for an image) would set it.

A file is written to a temporary name and renamed into place, so without this it would keep
the label its directory's type transition gives new files, whatever file_contexts says about
its path. Here the label is set on the temporary file (by its descriptor) before the rename:
no reader ever sees the file under its final name with another label.

Which policy:
- root `/`: the loaded policy, only when the kernel has SELinux (selinuxfs is registered:
  nothing is imported otherwise) and libselinux's Python binding says it is enabled.
- another root (`--root DIR`, an image being built): the image's own policy, as `setfiles -r`
  uses it: DIR/etc/selinux/config's SELINUXTYPE, then that type's contexts/files/file_contexts
  (with its .local, .homedirs and .subs files), looked up by the path inside the image. The
  build host's own SELinux state does not matter; an image whose config says disabled, or that
  has none, is not labeled.

libselinux's binding (`selinux`: python3-libselinux on Fedora-family systems, python3-selinux
on Debian) is optional. A path the policy gives no rule (file_contexts' `<<none>>`, as under
/run in the reference policy) keeps the label it gets today. Labels never fail a write: a file
that cannot be labeled (no binding, no policy, a filesystem without xattrs, a label the
host's policy refuses) is one warning per kind of trouble in the process, and is written
as before.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from ..logs import std_logger

__all__ = ["Labels", "for_root", "inside", "label_new"]

LOG = std_logger(__name__)

XATTR = "security.selinux"
_FILESYSTEMS = "/proc/filesystems"
_DEFAULT_TYPE = "targeted"  # libselinux's own default when the config names none

_lock = threading.Lock()
_by_root: Dict[str, Tuple[Tuple[Any, ...], Optional[Labels]]] = {}
_warned: Set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """One warning of each kind per process: a boot writing twenty files says it once."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    LOG.warning(message, *args)


def inside(root: str, real_path: str) -> str:
    """The path a file has inside `root` (what file_contexts is matched against)."""
    top = root.rstrip("/")
    if not top:
        return real_path
    rest = real_path[len(top):] if real_path.startswith(top + "/") or real_path == top else real_path
    return rest or "/"


class Labels:
    """The file contexts of one policy, open once (selabel_open) for every file of a run."""

    def __init__(self, binding: Any, handle: Any, root: str, policy: str) -> None:
        self._selinux = binding
        self._handle = handle
        self.root = root
        self.policy = policy  # for messages: the file_contexts used, or "the loaded policy"

    def context(self, path: str, file_type: int) -> Optional[str]:
        """The context file_contexts gives `path` (inside the root) for this file type
        (stat.S_IFREG, S_IFDIR...); None where it gives no rule, or the lookup failed."""
        try:
            context = self._selinux.selabel_lookup_raw(self._handle, path, file_type)[1]
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: no rule, or `<<none>>`: leave the file as it is
                warn_once("lookup", "SELinux: cannot look up the context of %s in %s: %s; such files keep the "
                          "label their directory gives them", path, self.policy, exc.strerror or exc)
            return None
        return str(context) if context else None

    def label(self, fd: int, real_path: str, file_type: int) -> None:
        """Give the open file `fd`, which is (or will be renamed to) `real_path`, its context.
        Nothing is changed where the policy has no rule or the file already has it."""
        path = inside(self.root, real_path)
        wanted = self.context(path, file_type)
        if wanted is None:
            return
        try:
            current: Optional[bytes] = os.getxattr(fd, XATTR)
        except OSError:
            current = None
        if current is not None and current.rstrip(b"\0").decode("utf-8", "replace") == wanted:
            return
        try:
            self._selinux.fsetfilecon_raw(fd, wanted)
        except OSError as exc:
            key = "unsupported" if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) else "set"
            why = "the filesystem has no SELinux labels" if key == "unsupported" else exc.strerror or str(exc)
            warn_once(key, "SELinux: cannot label %s %s: %s; it keeps the label its directory gives it "
                      "(this is said once per run)", real_path, wanted, why)


def for_root(root: str = "/") -> Optional[Labels]:
    """The labels for files written under `root`, or None where nothing is to be labeled.

    Open once and kept for the process, reopened when the policy's files change (a long-running
    watcher sees `semanage fcontext -a` and a policy update)."""
    top = root.rstrip("/") or "/"
    if top == "/" and _kernel_runs_selinux() is False:
        return None  # a kernel without SELinux: nothing to read or stat for each file written
    signature = _signature(top)
    with _lock:
        known = _by_root.get(top)
        if known is not None and known[0] == signature:
            return known[1]
    labels = _open(top)
    with _lock:
        _by_root[top] = (signature, labels)
    return labels


def label_new(fd: int, real_path: str, file_type: int, root: str = "/") -> None:
    """What every writer does with a file or directory it has just made, open at `fd`: the
    context the policy of `root` gives `real_path`; nothing where SELinux is not used."""
    labels = for_root(root)
    if labels is not None:
        labels.label(fd, real_path, file_type)


def _signature(top: str) -> Tuple[Any, ...]:
    """What, when it changes, means the policy's file contexts may have changed: stats only,
    and the config read again only when its own stat changed. (A handle replaced is not
    closed: another thread may be using it, and policies change rarely.)"""
    config = _config_path(top)
    config_stat = _stat_key(config)
    found = _config_seen(top, config_stat)
    signature: List[Any] = [_kernel_runs_selinux() if top == "/" else None, (config, config_stat)]
    if found is not None and found[1] is not None:
        signature += [(name, _stat_key(name)) for name in (found[1] + suffix for suffix in (
            "", ".local", ".homedirs", ".subs", ".subs_dist"))]
    return tuple(signature)


def _stat_key(name: str) -> Optional[Tuple[int, int, int]]:
    try:
        info = os.stat(name)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


_configs: Dict[str, Tuple[Any, Optional[Tuple[str, Optional[str]]]]] = {}  # top -> (config's stat, what it says)


def _config_seen(top: str, config_stat: Any) -> Optional[Tuple[str, Optional[str]]]:
    """_config(top), read again only when the config's stat is not the one it was read at."""
    with _lock:
        known = _configs.get(top)
    if known is not None and known[0] == config_stat:
        return known[1]
    found = _config(top)
    with _lock:
        _configs[top] = (config_stat, found)
    return found


_kernel_answer: List[Optional[bool]] = []  # asked once per process: a kernel does not gain SELinux while it runs


def _kernel_runs_selinux() -> Optional[bool]:
    with _lock:
        if not _kernel_answer:
            _kernel_answer.append(_kernel_has_selinux())
        return _kernel_answer[0]


def _kernel_has_selinux() -> Optional[bool]:
    """Whether the kernel runs SELinux: selinuxfs is registered only when it does, so this
    tells without importing libselinux. None when /proc cannot tell (then the binding decides)."""
    try:
        with open(_FILESYSTEMS, encoding="ascii", errors="replace") as handle:
            return any(line.split()[-1:] == ["selinuxfs"] for line in handle)
    except OSError:
        return None


def _config_path(top: str) -> str:
    return "/etc/selinux/config" if top == "/" else f"{top}/etc/selinux/config"


def _config(top: str) -> Optional[Tuple[str, Optional[str]]]:
    """(policy type, where its file_contexts is, or None for a type that names no directory)
    from TOP/etc/selinux/config; None when the config is absent or says SELinux is disabled."""
    base = "" if top == "/" else top
    try:
        with open(_config_path(top), encoding="utf-8", errors="replace") as handle:
            text = handle.read(64 * 1024)
    except OSError:
        return None
    settings: Dict[str, str] = {}
    for line in text.splitlines():
        key, equals, value = line.strip().partition("=")
        if equals and not key.startswith("#"):
            settings[key.strip()] = value.strip().strip("\"'")
    if settings.get("SELINUX", "").lower() == "disabled":
        return None
    policy_type = settings.get("SELINUXTYPE") or _DEFAULT_TYPE
    if "/" in policy_type or policy_type in (".", ".."):
        return policy_type, None
    return policy_type, f"{base}/etc/selinux/{policy_type}/contexts/files/file_contexts"


def _binding() -> Any:
    try:
        import selinux  # libselinux's binding: optional, present where SELinux is used
    except ImportError:
        return None
    return selinux


def _open(top: str) -> Optional[Labels]:
    if top == "/":
        return _open_loaded()
    found = _config_seen(top, _stat_key(_config_path(top)))
    if found is None:
        return None  # the image does not use SELinux
    policy_type, file_contexts = found
    if file_contexts is None or not os.path.isfile(file_contexts):
        warn_once(f"no-contexts:{top}", "SELinux: %s/etc/selinux/config names the policy %r, which has no "
                  "contexts/files/file_contexts in the image: files are written without its labels",
                  top, policy_type)
        return None
    binding = _binding()
    if binding is None:
        warn_once(f"no-binding:{top}", "SELinux: the image %s uses the policy %r, but this host has no libselinux "
                  "Python binding (python3-libselinux, python3-selinux): files are written without its labels; "
                  "label them with setfiles -r %s %s before booting the image", top, policy_type, top, file_contexts)
        return None
    try:
        option = binding.selinux_opt()
        option.type = binding.SELABEL_OPT_PATH
        option.value = file_contexts
        handle = binding.selabel_open(binding.SELABEL_CTX_FILE, option, 1)
    except (OSError, AttributeError, TypeError) as exc:
        handle, trouble = None, str(exc)
    else:
        trouble = "no handle"
    if handle is None:
        warn_once(f"open:{top}", "SELinux: cannot read %s (%s): files are written without its labels",
                  file_contexts, trouble)
        return None
    return Labels(binding, handle, top, file_contexts)


def _open_loaded() -> Optional[Labels]:
    if _kernel_runs_selinux() is False:
        return None  # no SELinux in this kernel: nothing to import, nothing to call
    binding = _binding()
    if binding is None:
        if _kernel_runs_selinux():
            warn_once("no-binding", "SELinux: this host runs SELinux but has no libselinux Python binding "
                      "(python3-libselinux, python3-selinux): files get their directory's label, not their own "
                      "file context; restorecon sets it")
        return None
    if binding.is_selinux_enabled() != 1:
        return None
    try:
        handle = binding.selabel_open(binding.SELABEL_CTX_FILE, None, 0)
    except OSError as exc:
        handle, trouble = None, exc.strerror or str(exc)
    else:
        trouble = "no file contexts"
    if handle is None:
        warn_once("open", "SELinux: cannot read the loaded policy's file contexts (%s): files get their "
                  "directory's label", trouble)
        return None
    return Labels(binding, handle, "/", "the loaded policy")


def forget() -> None:
    """Drop the open handles and the warnings given (tests; a new run in the same process)."""
    with _lock:
        _by_root.clear()
        _warned.clear()
        _kernel_answer.clear()
        _configs.clear()
