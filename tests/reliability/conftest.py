"""The reliability harness: runs `cc-imds apply --debug` as a user would, against the
emulator with a fault injected, over outputs that already exist. After every run it
checks that no token or secret reached stdout or stderr, and records figures."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import yaml

from cc_imds.imds.tree import MetadataTree, load_tree
from cc_imds.testing.emulator import Emulator
from tests.conftest import PROCESS_SLACK, run_cli
from tests.reliability.scenarios import SCENARIOS

REPORT = os.environ.get("CC_IMDS_RELIABILITY_REPORT")
__all__ = ["PROCESS_SLACK"]  # defined with the in-process slack in tests/conftest.py
SECRETS = ("demoSecretAccessKey/NotARealSecret+0123456789", "demoSessionToken//NotARealToken/ZXhhbXBsZQ==")


def declaration(out: Path, **settings: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "values": {
            "instance_id": "meta-data/instance-id",
            "region": {"path": "dynamic/instance-identity/document", "key": "region"},
            "tags": "meta-data/tags/instance/",
            "secret_key": {"path": "meta-data/iam/security-credentials/app-server", "key": "SecretAccessKey"},
            "session_token": {"path": "meta-data/iam/security-credentials/app-server", "key": "Token"},
        },
        "env": [
            {"path": f"{out}/instance.sh", "format": "shell", "vars": {"INSTANCE_ID": "instance_id"},
             "expand": {"tags": "TAG_"}},
            {"path": f"{out}/instance.env", "format": "systemd", "vars": {"AWS_REGION": "region"}},
        ],
        "files": [{"path": f"{out}/credentials", "content": "{{ secret_key }}\n{{ session_token }}\n"}],
    }
    doc.update(settings)
    return doc


def digest(directory: Path) -> Dict[str, str]:
    """Every file under a directory with its content and mode: what 'untouched' means."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
        for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()
    }


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    puts: int
    gets: int

    @property
    def retries(self) -> int:
        return self.stderr.count("; retry ")


@dataclass
class Scenario:
    tmp: Path
    make_emulator: Callable[..., Emulator]
    out: Path = field(init=False)
    runs: List[Run] = field(default_factory=list)
    emulators: List[Emulator] = field(default_factory=list)
    extra_secrets: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = self.tmp / "out"

    def emulator(self, tree: Optional[MetadataTree] = None, **kwargs: Any) -> Emulator:
        emulator = self.make_emulator(tree, **kwargs)
        self.emulators.append(emulator)
        return emulator

    def write_declaration(self, doc: Dict[str, Any], name: str = "decl.yaml") -> Path:
        path = self.tmp / name
        path.write_text("#cloud-config\n" + yaml.safe_dump({"imds": doc}))
        return path

    def apply(self, emulator_or_url: Any, doc: Optional[Dict[str, Any]] = None, *extra: str) -> Run:
        url = emulator_or_url.url if isinstance(emulator_or_url, Emulator) else emulator_or_url
        path = self.write_declaration(doc or declaration(self.out))
        return self.cli("--debug", "apply", str(path), "--endpoint", url, "--no-conf-dir", *extra,
                        emulator=emulator_or_url if isinstance(emulator_or_url, Emulator) else None)

    def cli(self, *args: str, emulator: Optional[Emulator] = None) -> Run:
        before = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
        started = time.monotonic()
        result = run_cli(*args)
        seconds = time.monotonic() - started
        after = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
        run = Run(result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"),
                  seconds, after[0] - before[0], after[1] - before[1])
        assert "Traceback" not in run.stderr, run.stderr
        self.runs.append(run)
        return run

    def good_outputs(self) -> Dict[str, str]:
        """Apply once against a healthy emulator: the files every later run must keep or reproduce."""
        run = self.apply(self.emulator())
        assert run.code == 0, run.stderr
        return digest(self.out)

    def leaked(self) -> List[str]:
        secrets = [*SECRETS, *self.extra_secrets]
        for emulator in self.emulators:
            secrets.extend(emulator.issued_tokens())
        text = "".join(r.stdout + r.stderr for r in self.runs)
        return [s[:6] + "..." for s in secrets if s and s in text]


@pytest.fixture
def scenario(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> Iterator[Scenario]:
    it = Scenario(tmp_path, make_emulator)
    yield it
    assert it.leaked() == [], "a token or secret reached stdout or stderr"


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    def write(scenario_id: str, result: str, **figures: Any) -> None:
        assert scenario_id in SCENARIOS, scenario_id
        if REPORT:
            record = {"id": scenario_id, "result": result, "figures": figures, "python": platform.python_version()}
            with open(REPORT, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    return write


@pytest.fixture
def tree() -> MetadataTree:
    return load_tree()


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Every scenario here is a process run against a fault, often waiting out a deadline:
    the fast suites (the fresh clone's, the RPM's %check) leave them to the full runs."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
