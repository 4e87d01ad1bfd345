"""Shared fixtures: the emulator on real loopback sockets, trees, and a CLI runner."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import cc_imds
from cc_imds.imds.tree import MetadataTree, load_tree
from cc_imds.testing.emulator import Emulator

# Property tests: CI's verdict is reproducible, the same draws every run ("ci", the default);
# `make explore` draws afresh and many more ("explore", HYPOTHESIS_PROFILE=explore). What
# exploring finds is pinned in the test as an @example. The RPM's %check has no hypothesis.
EXPLORE_FACTOR = {"ci": 1, "explore": 20}
PROPERTY_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROPERTY_PROFILE not in EXPLORE_FACTOR:
    raise RuntimeError(f"HYPOTHESIS_PROFILE={PROPERTY_PROFILE!r}: expected one of {', '.join(EXPLORE_FACTOR)}")
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    pass
else:
    # No deadline: how long an example takes depends on the machine's load, not on the code.
    _hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=100,
                                          print_blob=True)
    _hypothesis_settings.register_profile("explore", derandomize=False, database=None, deadline=None,
                                          max_examples=100 * EXPLORE_FACTOR["explore"], print_blob=True)
    _hypothesis_settings.load_profile(PROPERTY_PROFILE)


def examples(count: int) -> int:
    """A property test's own number of examples, for CI; many times more when exploring."""
    return count * EXPLORE_FACTOR[PROPERTY_PROFILE]


# Time the tests allow beyond a promise, defined here only, so that no test types its own figure.
# docs/bounds.md, "Time and request bounds": a run, rendering included, ends within its deadline plus 0.5 s
# (waking from a cut-off socket, killing and reaping the renderer: at most 46 ms measured with a
# load average of 13 on 2 cores). Asserted in-process, where the deadline's clock starts.
DEADLINE_SLACK = 0.5
# A process also starts and imports before its deadline's clock starts: 0.2 s on an idle machine,
# up to 4.3 s measured with a load average of 13 on 2 cores. Bounds on whole processes add this; a
# hang is still far beyond it.
PROCESS_SLACK = 8.0
# A child process still running after this long is hung: every wait on one is bounded, so the
# test fails saying so instead of holding the suite (not a speed check: builds take minutes).
HUNG_AFTER = 1800
# A server that has not printed its banner after this long is hung (a start takes at most a few
# seconds under heavy load, see PROCESS_SLACK): the test fails saying so instead of holding the suite.
STARTED_WITHIN = 120.0
# A server sent its stop signal and still running after this long does not stop: it is killed.
STOPPED_WITHIN = 30.0


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it is true (returned) or `timeout` passes (the test fails): how tests
    wait for another thread or process, never with a bare sleep."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    found = condition()
    if found:
        return found
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# The emulator fixture, loaded the way users opt in to it (see cc_imds/testing/pytest_plugin.py).
pytest_plugins = ["cc_imds.testing.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# The cc_imds under test: the working tree's, or in the RPM's %check the build root's.
PACKAGE = Path(cc_imds.__file__).parent


# `make test` declares every part it runs required (the Makefile exports CC_IMDS_REQUIRE_E2E=1):
# a host that cannot run one (no root, no dash, cloud-init not unpacked...) fails the run, saying
# why, never reports it skipped. Elsewhere (a laptop, a build host) the test is skipped, saying why.
REQUIRED = os.environ.get("CC_IMDS_REQUIRE_E2E") == "1"


def require(condition: bool, why: str) -> None:
    """In a test or fixture: go on only if `condition`; otherwise skip, or fail under `make test`."""
    if not condition:
        if REQUIRED:
            pytest.fail(f"required (CC_IMDS_REQUIRE_E2E=1, as `make test` sets), but cannot run here: {why}",
                        pytrace=False)
        pytest.skip(why)


def requires(condition: bool, why: str) -> pytest.MarkDecorator:
    """require() as a mark, for a module (pytestmark), a test or a parameter."""
    return pytest.mark.skipif(False, reason=why) if condition else pytest.mark.cannot_run_here(why)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cannot_run_here(why): skipped, or failed under `make test` (see require)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("cannot_run_here"):
        require(False, mark.args[0])


def needs_root(why: str) -> None:
    """Tests that need root say why; `make test` runs as root."""
    require(os.geteuid() == 0, f"needs root: {why}")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# Build hosts and containers often run without IPv6 (Docker's default): no ::1 to listen on.
needs_ipv6_loopback = requires(_has_ipv6_loopback(), "this host has no IPv6 loopback (::1)")


@pytest.fixture(autouse=True)
def _no_real_imds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach 169.254.169.254: without an explicit endpoint they fail fast."""
    for name in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CC_IMDS_CONF_DIR", "/nonexistent/cc-imds-test-conf.d")


@pytest.fixture(autouse=True)
def _private_lock(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never take the host's /run/lock/cc-imds.lock."""
    monkeypatch.setenv("CC_IMDS_LOCK", str(tmp_path_factory.getbasetemp() / "cc-imds.lock"))


@pytest.fixture(autouse=True)
def _private_validation_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the host's record of validated declarations (cc_imds.declaration.cache)."""
    monkeypatch.setenv("CC_IMDS_CACHE_DIR", str(tmp_path_factory.mktemp("validated")))


@pytest.fixture(autouse=True)
def _private_run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the host's /run/cc-imds (the watcher's marker, status and state)."""
    monkeypatch.setenv("CC_IMDS_RUN_DIR", str(tmp_path_factory.mktemp("run") / "cc-imds"))


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the host's /var/lib/cc-imds (the lifecycle state last acted on)."""
    monkeypatch.setenv("CC_IMDS_STATE_DIR", str(tmp_path_factory.mktemp("state") / "cc-imds"))


@pytest.fixture
def watches() -> Iterator[Callable[..., Any]]:
    """Make `cc-imds watch` processes (tests/watch_harness.py); each is killed after the test."""
    from tests.watch_harness import Watch

    started: List[Watch] = []

    def make(tmp: Path, emulator: Emulator, declaration: Dict[str, Any]) -> Watch:
        watch = Watch(tmp, emulator, declaration)
        started.append(watch)
        return watch

    yield make
    for watch in started:
        watch.kill()


@pytest.fixture
def tree() -> MetadataTree:
    return load_tree()


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    started: List[Emulator] = []

    def make(tree: Optional[MetadataTree] = None, *, delay: float = 0.0, **kwargs: object) -> Emulator:
        emulator = Emulator(tree or load_tree(), **kwargs)  # type: ignore[arg-type]
        started.append(emulator.start(delay=delay))
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(imds_emulator: Emulator) -> Emulator:
    """The plugin's fixture (cc_imds.testing.pytest_plugin), as users of the package get it."""
    return imds_emulator


# `python -m cc_imds`, but without the current directory on sys.path (as for the installed
# `cc-imds` script): in the RPM's %check the current directory is the source tree, which
# must not shadow the package under test.
CLI = [sys.executable, "-c", "import runpy, sys; del sys.path[0]; runpy.run_module('cc_imds', run_name='__main__')"]


# How a child process starts with SIGINT, set explicitly rather than inherited from however pytest
# was launched: at its default (a foreground command), or ignored (a POSIX shell's background job,
# `nohup make test &`, where Python never raises KeyboardInterrupt).
SIGINT_STARTS = {"sigint-default": signal.SIG_DFL, "sigint-ignored": signal.SIG_IGN}


def sigint_at(disposition: Any) -> Callable[[], None]:
    """A preexec_fn that starts the child with SIGINT at `disposition`."""

    def set_it() -> None:
        signal.signal(signal.SIGINT, disposition)

    return set_it


def cli_env(env: Optional[dict] = None) -> dict:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(PACKAGE.parent) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("CC_IMDS_CONF_DIR", "/nonexistent/cc-imds-test-conf.d")
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, env: Optional[dict] = None, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run cc-imds as a user would, in a separate process, on the package under test."""
    return subprocess.run([*CLI, *args], capture_output=True, env=cli_env(env), input=stdin, timeout=120)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


class EmulateProcess:
    """`cc-imds emulate --port 0 --control-port 0 ARGS...` started with SIGINT ignored, as
    `cc-imds emulate ... &` starts it (or as `start` says, SIGINT_STARTS; without the control
    endpoint if `control` is false); `url` and `control` from its banner, read with a bound."""

    def __init__(self, *args: str, start: str = "sigint-ignored", control: bool = True) -> None:
        command = [*CLI, "emulate", "--port", "0", *(["--control-port", "0"] if control else []), *args]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=cli_env(),
                                        text=True, preexec_fn=sigint_at(SIGINT_STARTS[start]))
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="emulate stdout", daemon=True).start()
        try:
            self.banner = self._line()
            self.url = self.banner.split()[-1]
            self.control = self._line().split()[3] if control else ""
        except BaseException:
            self.kill()  # no server left running when its start failed
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # its end

    def _line(self) -> str:
        try:
            line = self._lines.get(timeout=STARTED_WITHIN)
        except queue.Empty:
            raise AssertionError(f"cc-imds emulate printed no banner within {STARTED_WITHIN:g}s") from None
        assert line, f"cc-imds emulate ended before its banner (exit {self.process.wait(timeout=STOPPED_WITHIN)})"
        return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Its exit after `sig`; killed, and the test failed, if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOPPED_WITHIN)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"cc-imds emulate still ran {STOPPED_WITHIN:g}s after signal {sig}; killed") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOPPED_WITHIN)


@pytest.fixture
def emulate_processes() -> Iterator[Callable[..., EmulateProcess]]:
    """Start EmulateProcess(ARGS...). After the test, each one still running gets SIGTERM, any
    that does not end is killed, and only then must each have exited 0."""
    started: List[EmulateProcess] = []

    def start(*args: str, **options: Any) -> EmulateProcess:
        started.append(EmulateProcess(*args, **options))
        return started[-1]

    yield start
    running = [server for server in started if server.process.poll() is None]
    for server in running:
        server.process.send_signal(signal.SIGTERM)
    exits: List[Any] = []
    for server in running:
        try:
            exits.append(server.process.wait(timeout=STOPPED_WITHIN))
        except subprocess.TimeoutExpired:
            exits.append(f"still running {STOPPED_WITHIN:g}s after SIGTERM")
    for server in running:
        server.kill()
    assert exits == [0] * len(running)
