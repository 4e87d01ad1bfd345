"""docs/lifecycle.md's recipe, as written: a `cc-imds watch` process completes the launch and
terminate lifecycle hooks with `aws autoscaling complete-lifecycle-action` when the emulator's
target-lifecycle-state moves. The real AWS API is out of reach: a stand-in `aws` on PATH
records its arguments. Every declaration on the page validates."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import yaml

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.testing.emulator import Emulator
from tests.conftest import REPO
from tests.watch_harness import Watch, wait_for

PAGE = REPO / "docs" / "lifecycle.md"
INSTANCE_ID = "i-0a1b2c3d4e5f60789"  # the bundled tree's, as are the region and the group's tag
REGION = "eu-west-1"
GROUP = "web-asg"


def page_yaml() -> List[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S)]


def test_every_declaration_on_the_page_validates() -> None:
    blocks = page_yaml()
    cloud_config = [block["imds"] for block in blocks if "imds" in block]
    drop_ins = [block for block in blocks if "imds" not in block]
    assert (len(cloud_config), len(drop_ins)) == (2, 1)
    for declaration in cloud_config:
        build_declaration([SourceDocument("docs/lifecycle.md", "imds", declaration)])
    for declaration in drop_ins:
        build_declaration([SourceDocument("docs/lifecycle.md", "", declaration)])


def recipe(bin_dir: Path) -> Dict[str, Any]:
    """The page's hook recipe; the site's own register and drain commands are stand-ins here,
    and the polls are a second apart so the test waits less."""
    [declaration] = [b["imds"] for b in page_yaml() if "complete-lifecycle-action" in yaml.safe_dump(b)]
    for event in declaration["events"]:
        event["run"][-1] = event["run"][-1].replace("/usr/local/sbin/", f"{bin_dir}/")
        event["poll"] = 1
    return dict(declaration)


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_the_recipe_completes_the_launch_and_terminate_hooks(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "aws-calls"
    executable(bin_dir / "aws", f'#!/bin/sh\n{{ echo "region=$AWS_REGION"; printf "%s\\n" "$@"; echo; }} >> {calls}\n')
    for step in ("register-node", "drain-node"):
        executable(bin_dir / step, f"#!/bin/sh\necho {step} >> {calls}\n")
    executable(bin_dir / "cc-imds", f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cc_imds "$@"\n')

    watch = watches(tmp_path / "watch", emulator, recipe(bin_dir))
    watch.env["PATH"] = f"{bin_dir}:{watch.env['PATH']}"
    watch.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = emulator.url  # where the command's `cc-imds get` asks
    emulator.set_lifecycle_state("InService")
    watch.start()
    launch = ["register-node", f"region={REGION}", "autoscaling", "complete-lifecycle-action",
              "--lifecycle-hook-name", "launch-hook", "--auto-scaling-group-name", GROUP,
              "--lifecycle-action-result", "CONTINUE", "--instance-id", INSTANCE_ID, ""]
    wait_for(lambda: calls.exists() and calls.read_text().splitlines() == launch, timeout=60,
             what=f"the launch hook completed: {calls.read_text() if calls.exists() else ''}")

    emulator.set_lifecycle_state("Terminated")
    terminate = ["drain-node", f"region={REGION}", "autoscaling", "complete-lifecycle-action",
                 "--lifecycle-hook-name", "terminate-hook", "--auto-scaling-group-name", GROUP,
                 "--lifecycle-action-result", "CONTINUE", "--instance-id", INSTANCE_ID, ""]
    wait_for(lambda: calls.read_text().splitlines() == launch + terminate, timeout=60,
             what=f"the terminate hook completed: {calls.read_text()}")

    def status_settled() -> bool:
        code, document = watch.status()
        commands = [c for n in document["status"]["events"]["lifecycle"]["notices"] for c in n["commands"]]
        return code == 0 and len(commands) == 2 and all(c.get("exit") == 0 for c in commands)

    wait_for(status_settled, timeout=60, what="both commands' results in the status file")
    text = watch.cli("status").stdout.decode()
    assert "  state Terminated; last acted on Terminated, seen " in text
    assert "  transition (none) -> InService seen " in text
    assert "  transition InService -> Terminated seen " in text
    assert text.count(": exit 0 at ") == 2

    # A restart in the same boot acts on nothing again.
    assert watch.stop() == 0
    polled = watch.polls_of("meta-data/autoscaling/target-lifecycle-state")
    watch.start()
    wait_for(lambda: watch.polls_of("meta-data/autoscaling/target-lifecycle-state") >= polled + 3,
             timeout=60, what="three polls after the restart")
    assert watch.stop() == 0
    assert calls.read_text().splitlines() == launch + terminate
