"""The watcher's declaration, read in a short-lived child (watch/build_child.py): the same
Declaration, the same errors, as reading it in the watcher would give."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import pytest

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import CcImdsError, DeclarationError
from cc_imds.watch.build_child import build_in_child

CREDS = "meta-data/iam/security-credentials/app-server"

EVERY_PART: Dict[str, Any] = {
    "endpoint": "http://127.0.0.1:1", "deadline": 5, "concurrency": 2,
    "values": {"tags": {"path": "meta-data/tags/instance/", "refresh": 60},
               "key": {"path": CREDS, "key": "AccessKeyId"},
               "iid": {"path": "meta-data/instance-id", "default": "i-0", "sensitive": True}},
    "env": [{"path": "/etc/app/tags.env", "format": "shell", "expand": {"tags": "TAG_"}, "permissions": "0600",
             "on_change": {"run": ["true"], "timeout": 5, "wait": {"min": 3, "max": 9}, "splay": 2}}],
    "files": [{"path": "/etc/app/app.conf", "content": "{% for k in tags %}{{ k }}{% endfor %}{{ key }}{{ iid }}",
               "on_change": ["systemctl", "reload", "app"]}],
    "credentials": [{"path": "/etc/app/creds.json", "format": "process", "role": "app-server"}],
    "events": [{"event": "spot-interruption", "run": ["drain"], "poll": 2}],
    "metrics": {"path": "/var/lib/node_exporter/textfile_collector/cc_imds.prom"},
}


def documents(document: Dict[str, Any]) -> List[SourceDocument]:
    return [SourceDocument("user-data", "imds", document)]


def test_the_child_hands_back_the_declaration_the_watcher_would_have_built() -> None:
    assert build_in_child(lambda: documents(EVERY_PART)) == build_declaration(documents(EVERY_PART))


def test_every_problem_comes_back_as_it_would_have_been_raised() -> None:
    bad = {"values": {"v": {"path": "meta-data/x", "refresh": 0}}, "metrics": {"path": "/x.txt"}}
    with pytest.raises(DeclarationError) as here:
        build_declaration(documents(bad))
    with pytest.raises(DeclarationError) as there:
        build_in_child(lambda: documents(bad))
    assert there.value.problems == here.value.problems and len(here.value.problems) == 2


def test_a_failure_to_load_and_a_bug_come_back_too() -> None:
    def unreadable() -> List[SourceDocument]:
        raise CcImdsError("/etc/cc-imds/conf.d/50-app.yaml: cannot read: Permission denied")

    def buggy() -> List[SourceDocument]:
        raise KeyError("surprise")

    with pytest.raises(CcImdsError, match="^/etc/cc-imds/conf.d/50-app.yaml: cannot read: Permission denied$"):
        build_in_child(unreadable)
    with pytest.raises(RuntimeError, match="(?s)reading the declaration failed:.*KeyError: 'surprise'"):
        build_in_child(buggy)


def test_a_child_that_hangs_is_stopped_at_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(CcImdsError, match="reading the declaration took more than 0.5s; it was stopped"):
        build_in_child(lambda: time.sleep(60) or [], seconds=0.5)  # type: ignore[func-returns-value]
    assert time.monotonic() - started < 30
