"""A pytest fixture for projects that test their own IMDS consumers against cc-imds's
strict emulator. Opt in per run or per project; it is never loaded on its own:

    pytest -p cc_imds.testing.pytest_plugin                  # one run
    pytest_plugins = ["cc_imds.testing.pytest_plugin"]       # a project's top-level conftest.py
    addopts = "-p cc_imds.testing.pytest_plugin"             # or its pytest configuration

    def test_my_boot_script_survives_throttling(imds_emulator):
        imds_emulator.fail_next(503, count=2, method="GET")  # the token PUT is answered
        run_my_script(endpoint=imds_emulator.url)
        assert imds_emulator.count("PUT") == 1  # one token, reused across the retries
        assert imds_emulator.pending_faults() == 0  # both 503s were seen, and retried

The emulator serves the bundled metadata tree on 127.0.0.1, in `required` (IMDSv2-only)
mode, and stops after the test. Use `cc_imds.testing.emulator.Emulator` directly for other trees.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from ..imds.tree import load_tree
from .emulator import Emulator


@pytest.fixture
def imds_emulator() -> Iterator[Emulator]:
    with Emulator(load_tree()) as emulator:
        yield emulator
