"""The imds_emulator fixture is opt-in: `-p cc_imds.testing.pytest_plugin` loads it; nothing else does."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, cli_env

USER_TEST = '''
import urllib.request

def test_uses_the_fixture(imds_emulator):
    request = urllib.request.Request(imds_emulator.url + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert imds_emulator.count("PUT") == 1
'''


# The plugin's own example (its module docstring), with `cc-imds get` as the boot script.
THROTTLED_TEST = '''
import subprocess, sys

def run_my_script(endpoint):
    subprocess.run([sys.executable, "-m", "cc_imds", "get", "meta-data/instance-id", "--endpoint", endpoint],
                   check=True, capture_output=True, timeout=60)

def test_my_boot_script_survives_throttling(imds_emulator):
    imds_emulator.fail_next(503, count=2, method="GET")  # the token PUT is answered
    run_my_script(endpoint=imds_emulator.url)
    assert imds_emulator.count("PUT") == 1  # one token, reused across the retries
    assert imds_emulator.pending_faults() == 0  # both 503s were seen, and retried

def test_an_untargeted_fault_takes_the_token_put_first(imds_emulator):
    imds_emulator.fail_next(503)
    run_my_script(endpoint=imds_emulator.url)
    assert imds_emulator.count("PUT") == 2 and imds_emulator.count("GET") == 1
'''


def run_pytest(tmp_path: Path, *args: str, test: str = USER_TEST) -> subprocess.CompletedProcess:
    (tmp_path / "test_user.py").write_text(test)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_user.py"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=120)


def test_a_project_opts_in_with_dash_p(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-p", "cc_imds.testing.pytest_plugin")
    assert result.returncode == 0, result.stdout
    assert "1 passed" in result.stdout


def test_the_documented_example_passes_against_a_real_client(tmp_path: Path) -> None:
    import cc_imds.testing.pytest_plugin as plugin

    lines = (plugin.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    def test_"))
    end = lines.index("", start)
    example = "\n".join(line[4:] for line in lines[start:end])
    assert example in THROTTLED_TEST, "the docstring's example is the one run here"
    result = run_pytest(tmp_path, "-p", "cc_imds.testing.pytest_plugin", test=THROTTLED_TEST)
    assert result.returncode == 0, result.stdout
    assert "2 passed" in result.stdout


def test_without_opting_in_there_is_no_fixture(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    assert result.returncode == 1
    assert "fixture 'imds_emulator' not found" in result.stdout


def test_the_package_registers_no_pytest_entry_point() -> None:
    """A pytest11 entry point would load the plugin into every pytest run on a host with the package."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    # None at all: the command is a script (bin/cc-imds), and projects opt in to the plugin.
    assert not config.has_section("options.entry_points")
    assert config["options"]["scripts"].split() == ["bin/cc-imds"]
