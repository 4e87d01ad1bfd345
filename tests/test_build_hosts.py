"""The tests the RPM's %check runs hold on build hosts unlike this one. Amazon Linux 2023
builds run as root, often in a container without IPv6, and name nobody's group `nobody`
(Debian: `nogroup`). Each case reruns a few of the suite's own tests under such a host,
made with namespaces: nothing on this host changes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, requires

pytestmark = requires(os.geteuid() == 0 and shutil.which("unshare") is not None,
                      "needs root and unshare to make another host's view")


def pytest_in(setup: str, *args: str, required: bool = False) -> subprocess.CompletedProcess:
    """Run pytest on the given tests after `setup` (shell) ran in fresh namespaces; as on a build
    host, nothing is declared required (tests/conftest.py's require) unless `required`."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args]
    script = f'{setup} && exec "$@"'
    env = {k: v for k, v in os.environ.items() if k != "CC_IMDS_REQUIRE_E2E"}
    if required:
        env["CC_IMDS_REQUIRE_E2E"] = "1"
    return subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *command], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


NO_IPV6 = "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1"
IPV6_TESTS = ("-k", "ipv6_loopback", "tests/test_emulator.py", "tests/test_client.py")


def test_without_ipv6_the_ipv6_loopback_tests_skip_with_a_reason() -> None:
    result = pytest_in(NO_IPV6, *IPV6_TESTS)
    assert result.returncode == 0, result.stdout[-3000:]
    skips = re.findall(r"^SKIPPED \[(\d+)\] .*: this host has no IPv6 loopback \(::1\)$", result.stdout, flags=re.M)
    assert sum(map(int, skips)) == 2, result.stdout[-3000:]
    assert "2 skipped" in result.stdout.splitlines()[-1]


def test_under_make_test_a_missing_ipv6_loopback_fails_saying_why() -> None:
    result = pytest_in(NO_IPV6, *IPV6_TESTS, required=True)
    assert result.returncode == 1, result.stdout[-3000:]
    assert result.stdout.count("cannot run here: this host has no IPv6 loopback (::1)") >= 2
    assert "2 errors" in result.stdout.splitlines()[-1] and "skipped" not in result.stdout.splitlines()[-1]


def test_with_amazon_linux_group_names_ownership_still_works(tmp_path: Path) -> None:
    nobody_gid = next(line.split(":")[3] for line in Path("/etc/passwd").read_text().splitlines()
                      if line.startswith("nobody:"))
    group = tmp_path / "group"
    lines = [line for line in Path("/etc/group").read_text().splitlines() if line.split(":")[2] != nobody_gid]
    group.write_text("\n".join([*lines, f"nobody:x:{nobody_gid}:"]) + "\n")
    # Users and groups from the files alone: Debian's nss-systemd would still make up `nogroup`.
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd: files\ngroup: files\nshadow: files\nhosts: files\n")
    result = pytest_in(f"mount --bind {group} /etc/group && mount --bind {nsswitch} /etc/nsswitch.conf",
                       "-k", "owner", "tests/test_write.py")
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout.splitlines()[-1] and "skipped" not in result.stdout.splitlines()[-1]
