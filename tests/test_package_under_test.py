"""The tests test the package they are meant to: the working tree's cc_imds, or, in the RPM's
%check, the copy installed into the build root (CC_IMDS_UNDER_TEST), never the source tree
shadowing it. The CLI subprocesses the tests start import the same copy."""

from __future__ import annotations

import os
from pathlib import Path

import cc_imds
from tests.conftest import PACKAGE, REPO, run_cli


def expected() -> Path:
    return Path(os.environ.get("CC_IMDS_UNDER_TEST", REPO / "cc_imds"))


def test_the_tests_import_the_package_under_test() -> None:
    assert Path(cc_imds.__file__).resolve().parent == expected().resolve()
    assert PACKAGE.resolve() == expected().resolve()


def test_the_cli_the_tests_run_is_the_package_under_test() -> None:
    result = run_cli("--debug", "--version", env={"PYTHONVERBOSE": "1"})
    assert result.stdout.decode().strip() == f"cc-imds {cc_imds.__version__}"
    # Python's verbose import log names the file each module came from.
    imported = [line for line in result.stderr.decode().splitlines() if "cc_imds/__init__.py" in line]
    assert imported and all(str(expected().resolve()) in line or str(expected()) in line for line in imported)
