"""The benchmark's hand-written contenders write exactly what cc-imds writes, so its
comparisons stay like for like (bench/run.py checks this on every run too)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from bench.run import bench_tree, declaration
from cc_imds.testing.emulator import Emulator
from tests.conftest import HUNG_AFTER, REPO


@pytest.mark.parametrize("flag", [[], ["--token-per-value"]])
def test_curl_script_matches_cc_imds(cli: Callable, make_emulator: Callable[..., Emulator], tmp_path: Path,
                                     flag: list) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed (installed by .ci/run)")
    emulator = make_emulator(bench_tree())
    decl = tmp_path / "decl.json"
    decl.write_text(json.dumps({"imds": declaration(5, tmp_path / "cc-imds", emulator.url)}))
    assert cli("apply", str(decl), "--no-conf-dir").returncode == 0
    emulator.clear_log()
    subprocess.run(["bash", str(REPO / "bench/imds-curl.sh"), *flag, emulator.url, "5", str(tmp_path / "curl")],
                   check=True, timeout=HUNG_AFTER)
    for name in ("bench.sh", "bench.conf"):
        assert (tmp_path / "curl" / name).read_bytes() == (tmp_path / "cc-imds" / name).read_bytes()
    assert emulator.count("PUT") == (1 if not flag else 5 + 1 + 20 + 1 + 1)


def test_curl_values_script_prints_what_get_shell_prints(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(bench_tree())
    pairs = [f"V{i:03d}=meta-data/bench/v{i:03d}" for i in range(10)]
    got = cli("get", "--shell", *pairs, "--endpoint", emulator.url)
    assert got.returncode == 0, got.stderr
    curl = subprocess.run(["bash", str(REPO / "bench/curl-values.sh"), emulator.url, *pairs], capture_output=True,
                          check=True, timeout=HUNG_AFTER)
    assert curl.stdout == got.stdout
