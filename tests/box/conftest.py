"""Fixtures of the boot tests.

They boot VMs for several minutes and need root, qemu, mmdebstrap and e2fsprogs, so they
run only with CC_IMDS_BOX=1 (`make test-box`, part of `make test`); then any missing
prerequisite is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import wait
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from tests.box import vm
from tests.box.image import RELEASES, BuildError
from tests.box.runner import BOOT_TIMEOUT, RUNS, UNPACKED_CLOUD_INIT, BootResult, Box, host_python
from tests.box.scenarios import boots_needed, credential_lifetime_problems

_boxes: List[Box] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boots(name): the box boot ('chain/boot') a test reads")


def prerequisites() -> List[str]:
    problems = [f"{tool} is missing (tests/install-system-deps)" for tool in vm.have_tools()]
    if os.geteuid() != 0:
        problems.append("building images needs root (mmdebstrap, chroot)")
    problems.extend(credential_lifetime_problems(BOOT_TIMEOUT))
    for release in RELEASES.values():
        if not (UNPACKED_CLOUD_INIT / release.cloud_init / ".complete").exists():
            problems.append(f"cloud-init {release.cloud_init} is not unpacked (tests/e2e/fetch-cloud-init)")
        if not host_python(release.cloud_init).exists():
            problems.append(f"{host_python(release.cloud_init)} is missing (make test-setup)")
    return problems


@pytest.fixture(params=sorted(RELEASES))
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    problems = prerequisites()
    if problems:
        pytest.fail("the box cannot run here: " + "; ".join(problems))
    wanted: Dict[Tuple[str, str], List[str]] = {}
    by_release: Dict[str, List[Tuple[str, str]]] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        for marker in item.iter_markers("boots"):
            if callspec is not None and "release" in callspec.params:
                for name in marker.args:
                    chain, boot = name.split("/")
                    by_release.setdefault(callspec.params["release"], []).append((chain, boot))
    for release_name, pairs in by_release.items():
        for chain, boots in boots_needed(pairs).items():
            wanted[(release_name, chain)] = boots
    runner = Box(wanted)
    _boxes.append(runner)
    yield runner
    runner.close()


@pytest.fixture
def boots(box: Box, release: str, request: pytest.FixtureRequest) -> Callable[[str], BootResult]:
    """The results of the boots named by the test's `boots` marker, for this release."""
    marker = request.node.get_closest_marker("boots")
    assert marker is not None, "a box test names its boots: @pytest.mark.boots('chain/boot', ...)"

    def get(name: str) -> BootResult:
        assert name in marker.args, f"{name} is not in the test's boots marker"
        return booted(box, request, release, name)

    return get


@pytest.fixture
def boot(boots: Callable[[str], BootResult], request: pytest.FixtureRequest) -> BootResult:
    """The results of the (first) boot named by the test's `boots` marker."""
    return boots(request.node.get_closest_marker("boots").args[0])


def booted(box: Box, request: pytest.FixtureRequest, release: str, name: str) -> BootResult:
    """Wait for a boot, printing the box's progress meanwhile (boots take minutes)."""
    chain, boot_name = name.split("/")
    box.start()
    future = box.boots[(release, chain, boot_name)]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    while True:
        wait([future], timeout=1.0)
        steps = box.progress.unprinted()
        if steps and capture is not None and reporter is not None:
            with capture.global_and_fixture_disabled():
                for step in steps:
                    reporter.write_line(f"box: {step.what}: {step.seconds:.1f} s {step.detail}".rstrip())
        if future.done():
            problem = future.exception()
            if isinstance(problem, (vm.BootFailed, BuildError)):  # the message says it all
                pytest.fail(f"{release} {name}: {problem}", pytrace=False)
            return future.result()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for runner in _boxes:
        if not runner.progress.steps:
            continue
        write = terminalreporter.write_line
        terminalreporter.section("box")
        progress = runner.progress
        write(f"accelerator: {progress.accel.upper() or '?'} ({progress.accel_reason})")
        for step in progress.steps:
            write(f"{step.what:<40} {step.seconds:7.1f} s  {step.detail}")
        figures = runner.figures()
        for name, figure in figures.items():
            write(f"{name:<40} {figure}")
        if runner.started_at:
            write(f"{'total':<40} {runner.elapsed():7.1f} s  ({runner.jobs} VM(s) at a time)")
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS / "summary.json").write_text(json.dumps(runner.summary(), indent=1))
