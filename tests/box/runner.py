"""Run the box: build the images once, boot the chains in parallel, hand each boot's results
to the tests that wait for them.

Images for the releases are built in parallel (the wheel first, once). Chains then boot on
as many workers as the machine has cores (each VM has one vCPU), longest chains first; the
boots of one chain run in order on one disk, and a worker that ends a boot takes the boot
that has waited longest, of any chain. Every step's time is recorded for the summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tests.box import image as images
from tests.box import vm
from tests.box.scenarios import CHAINS, Chain
from tests.conftest import HUNG_AFTER
from tests.e2e.harness import PYTHONS

# The box boots VMs for minutes and needs root: it runs when asked (make test-box).
ENABLED = os.environ.get("CC_IMDS_BOX") == "1"
RUNS = images.CACHE / "runs"
UNPACKED_CLOUD_INIT = images.UNPACKED_CLOUD_INIT
PY39 = images.REPO / ".venv/py39/bin/python"
BOOT_TIMEOUT = float(os.environ.get("CC_IMDS_BOX_BOOT_TIMEOUT", "900"))
# Check the last run's results again without booting (while writing tests).
REUSE = os.environ.get("CC_IMDS_BOX_REUSE") == "1"


@dataclass
class Step:
    what: str
    seconds: float
    detail: str = ""


@dataclass
class Progress:
    """What happened so far, for the live progress lines and the final summary."""

    steps: List[Step] = field(default_factory=list)
    accel: str = ""
    accel_reason: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _printed: int = 0

    def add(self, what: str, seconds: float, detail: str = "") -> None:
        with self._lock:
            self.steps.append(Step(what, seconds, detail))

    def unprinted(self) -> List[Step]:
        with self._lock:
            new, self._printed = self.steps[self._printed :], len(self.steps)
            return new


class BootResult:
    """One boot's results, read back from the disk after the VM powered off."""

    def __init__(
        self, release: str, chain: Chain, name: str, directory: Path, seconds: float, accel: str, cpu: float = 0.0
    ) -> None:
        self.release, self.chain, self.name = release, chain, name
        self.dir, self.seconds, self.accel, self.cpu_seconds = directory, seconds, accel, cpu
        self.results = directory / "results"

    def __repr__(self) -> str:
        return f"<boot {self.release}/{self.chain.name}/{self.name}>"

    def json(self, name: str) -> Any:
        return json.loads((self.results / name).read_text())

    def lines(self, name: str) -> List[Dict[str, Any]]:
        path = self.results / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def status(self) -> Dict[str, Any]:
        """`cloud-init status --long --format json`, plus its exit status as `rc`."""
        ran = self.json("status.json")
        if "status_v1" in ran:  # before 22.3: its text and status.json
            return {**status_before_22_3(ran["stdout"], ran["status_v1"]), "rc": ran["rc"], "stderr": ran["stderr"]}
        return {**json.loads(ran["stdout"] or "{}"), "rc": ran["rc"], "stderr": ran["stderr"]}

    @property
    def outputs(self) -> Dict[str, Optional[Dict[str, Any]]]:
        """Each inspected path once the after-boot commands are done."""
        return dict(self.json("outputs.json"))

    @property
    def outputs_at_boot(self) -> Dict[str, Optional[Dict[str, Any]]]:
        """Each inspected path as the boot left it, before the after-boot commands."""
        return dict(self.json("outputs-at-boot.json"))

    @property
    def consumer(self) -> Dict[str, Any]:
        return dict(self.json("consumer.json"))

    @property
    def requests(self) -> List[Dict[str, Any]]:
        return self.lines("imds-requests.jsonl")

    @property
    def events(self) -> List[Dict[str, Any]]:
        return self.lines("imds-events.jsonl")

    @property
    def after_boot(self) -> Dict[str, Any]:
        """When the boot's `after_boot` commands started, and what each did."""
        return dict(self.json("after-boot.json"))

    def ran(self, command: str) -> List[Dict[str, Any]]:
        """What each run of an `after_boot` command did (exit status as `rc`, its output)."""
        return [c for c in self.after_boot["commands"] if c["command"] == ["/bin/sh", "-c", command]]

    @property
    def watcher(self) -> Dict[str, Any]:
        """The watcher's units as systemd saw them, before and after the after-boot commands."""
        return dict(self.json("watcher.json"))

    @property
    def watch_commands(self) -> List[Dict[str, Any]]:
        """Each run of the declaration's on_change and event commands (guest/record.py)."""
        return self.lines("watch-commands.jsonl")

    @property
    def user_data(self) -> str:
        path = self.results / "user-data.txt"
        return path.read_text() if path.exists() else ""

    @property
    def config(self) -> Dict[str, Any]:
        """What the boot was given (/etc/box/boot.json): the tree IMDS served, among others."""
        return dict(json.loads((self.dir / "boot.json").read_text()))

    @property
    def journal(self) -> str:
        """This boot's whole journal: every unit's log, the watcher's included."""
        return (self.results / "journal.txt").read_text(errors="replace")

    @property
    def log(self) -> str:
        """This boot's part of /var/log/cloud-init.log (it holds every boot of the disk)."""
        text = (self.dir / "cloud-init.log").read_text(errors="replace")
        starts = [m.start() for m in re.finditer(r"^.*running 'init-local' at", text, re.M)]
        return text[starts[-1] :] if starts else text

    def analyze(self) -> str:
        """`cloud-init analyze show` for this boot, by the same cloud-init version on the host."""
        path = self.dir / "analyze.txt"
        if not path.exists():
            log = self.dir / "this-boot-cloud-init.log"
            log.write_text(self.log)
            path.write_text(analyze_show(self.chain_release_version(), log))
        return path.read_text()

    def chain_release_version(self) -> str:
        return images.RELEASES[self.release].cloud_init

    def figures(self) -> Dict[str, float]:
        """cloud-init's own timing of this boot: when it was done (seconds of uptime), how
        long its config stage took, and how much of that was the imds module."""
        text = self.analyze()
        config = re.search(r"Finished stage: \(modules-config\) ([\d.]+) seconds", text)
        imds = re.search(r"config-imds ran successfully[^\n]*?\+([\d.]+)s", text)
        done = re.search(r"Cloud-init v\. \S+ finished at [^\n]* Up ([\d.]+) seconds", self.log)
        figures = {"wall": round(self.seconds, 1), "qemu_cpu": round(self.cpu_seconds, 1)}
        if done:
            figures["cloud_init_done_uptime"] = float(done.group(1))
        if config:
            figures["config_stage"] = float(config.group(1))
        if imds:
            figures["imds_module"] = float(imds.group(1))
        commands = self.after_boot["commands"] if (self.results / "after-boot.json").exists() else []
        if commands:
            figures["after_boot"] = round(sum(c.get("seconds", 0.0) for c in commands), 1)
        # After boot: from the moment a spot notice was asked of the emulator to the start of
        # the command the watcher ran for it.
        issued = [e["before"] for e in self.events if e["event"] == "spot-notice"]
        ran = [r["t"] for r in self.watch_commands if r["name"] == "spot-interruption"]
        if issued and ran:
            figures["spot_notice_to_command"] = round(min(ran) - issued[0], 2)
        return figures

    def failure_context(self) -> str:
        return f"{self!r}: results in {self.dir}\nserial log tail:\n{vm.tail(self.dir / 'serial.log', 25)}"


def status_before_22_3(text: str, status_v1: Dict[str, Any]) -> Dict[str, Any]:
    """The fields of `cloud-init status --format json` the tests read, from what cloud-init
    before 22.3 shows: the status from `status --long`, and, as 22.3 derives them from the same
    /run/cloud-init/status.json, the stages' errors and the datasource's short name.
    (Recoverable errors came in 23.4.)"""
    shown = re.search(r"^status: (\S+)$", text, re.M)
    datasource = (status_v1.get("datasource") or "").partition(" ")[0]
    return {
        "status": shown.group(1) if shown else None,
        "errors": [e for stage in status_v1.values() if isinstance(stage, dict) for e in stage.get("errors", [])],
        "datasource": datasource.lower().replace("datasource", "") or None,
    }


def host_python(version: str) -> Path:
    """The host's Python for a cloud-init version: AL2023's 22.2.2 runs on 3.9 alone, with
    AL2023's libraries (the py39 environment, as in tests/e2e); the others on this one."""
    return PY39 if PYTHONS.get(version) == ((3, 9), (3, 9)) else Path(sys.executable)


def host_cloud_init(version: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The cloud-init CLI of the guest's version, run on the host from the unpacked package."""
    site = UNPACKED_CLOUD_INIT / version / "usr/lib/python3/dist-packages"
    if not site.exists():
        raise RuntimeError(f"cloud-init {version} is not unpacked under {site.parent}: run tests/e2e/fetch-cloud-init")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [str(host_python(version)), "-m", "cloudinit.cmd.main", *args], capture_output=True, text=True, env=env,
        check=False, timeout=HUNG_AFTER)


def analyze_show(version: str, log: Path) -> str:
    done = host_cloud_init(version, "analyze", "show", "-i", str(log))
    if done.returncode != 0:
        raise RuntimeError(f"cloud-init analyze show failed: {done.stderr[-2000:]}")
    return done.stdout


def cloud_init_schema(version: str, cloud_config: Path) -> List[str]:
    """The schema errors `cloud-init schema -c` reports for a file (none when it is valid)."""
    done = host_cloud_init(version, "schema", "-c", str(cloud_config))
    if done.returncode == 0:
        return []
    prefix = "Error: Cloud config schema errors: "
    errors = [line[len(prefix) :] for line in (done.stdout + done.stderr).splitlines() if line.startswith(prefix)]
    if not errors:
        raise RuntimeError(f"cloud-init schema failed: {done.stdout}{done.stderr}")
    return errors


class Box:
    def __init__(self, wanted: Dict[Tuple[str, str], List[str]], jobs: Optional[int] = None) -> None:
        """`wanted` maps (release, chain) to the boots to run, in order."""
        self.wanted = wanted
        self.jobs = jobs or int(os.environ.get("CC_IMDS_BOX_JOBS", "0")) or (os.cpu_count() or 1)
        self.progress = Progress()
        self.boots: Dict[Tuple[str, str, str], Future[BootResult]] = {
            (release, chain, boot): Future() for (release, chain), boots in wanted.items() for boot in boots
        }
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.jobs), thread_name_prefix="box-chain")
        # The wheel, then every release's image at the same time (each waits on the wheel).
        releases = {release for release, _ in wanted}
        self._image_pool = ThreadPoolExecutor(max_workers=len(releases) + 1, thread_name_prefix="box-image")
        self._started = False
        self._lock = threading.Lock()
        self._accel: Optional[Future[str]] = None
        self._cancel = threading.Event()
        self.started_at = 0.0

    # -- scheduling --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.started_at = time.monotonic()
        if REUSE:
            summary = RUNS / "summary.json"
            accel = json.loads(summary.read_text())["accelerator"] if summary.exists() else "?"
            for (release, chain, boot), future in self.boots.items():
                directory = RUNS / f"{release}-{chain}" / boot
                future.set_result(BootResult(release, CHAINS[chain], boot, directory, 0.0, accel))
            return
        shutil.rmtree(RUNS, ignore_errors=True)
        releases = sorted({release for release, _ in self.wanted})
        mirror = images.debian_mirror()
        wheel = self._image_pool.submit(self._wheel)
        built = {r: self._image_pool.submit(self._image, r, wheel, mirror) for r in releases}
        self._accel = self._image_pool.submit(self._probe, built)
        # Longest chains first. Each boot, once done, queues the next boot of its chain behind
        # the boots already waiting, so the workers alternate between chains: three chains of
        # two boots on two workers take three boots' time, not four.
        order = sorted(self.wanted.items(), key=lambda item: (-len(item[1]), item[0][1], item[0][0]))
        for (release, chain), boots in order:
            self._pool.submit(self._chain, release, CHAINS[chain], boots, 0, built[release])

    def result(self, release: str, chain: str, boot: str) -> BootResult:
        self.start()
        return self.boots[(release, chain, boot)].result()

    def finished(self) -> List[BootResult]:
        return [f.result() for f in self.boots.values() if f.done() and not f.cancelled() and f.exception() is None]

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def figures(self) -> Dict[str, str]:
        shown: Dict[str, str] = {}
        for result in self.finished():
            name = f"figures {result.release} {result.chain.name}/{result.name}"
            try:
                f = result.figures()
            except Exception as exc:  # the summary must not hide the test results
                shown[name] = f"unavailable: {exc}"
                continue
            parts = [f"qemu CPU {f['qemu_cpu']:.0f} s"]
            if "cloud_init_done_uptime" in f:
                parts.append(f"cloud-init done at {f['cloud_init_done_uptime']:.1f} s uptime")
            if "config_stage" in f and "imds_module" in f:
                share = 100 * f["imds_module"] / f["config_stage"] if f["config_stage"] else 0.0
                parts.append(f"config stage {f['config_stage']:.2f} s, imds {f['imds_module']:.2f} s ({share:.0f}%)")
            if "after_boot" in f:
                parts.append(f"after-boot commands {f['after_boot']:.0f} s")
            if "spot_notice_to_command" in f:
                parts.append(f"spot notice to its command {f['spot_notice_to_command']:.1f} s")
            shown[name] = "; ".join(p for p in parts if p)
        return shown

    def summary(self) -> Dict[str, Any]:
        boots: Dict[str, Any] = {}
        for result in self.finished():
            try:
                boots[f"{result.release} {result.chain.name}/{result.name}"] = result.figures()
            except Exception as exc:
                boots[f"{result.release} {result.chain.name}/{result.name}"] = {"error": str(exc)}
        return {
            "accelerator": self.progress.accel,
            "accelerator_reason": self.progress.accel_reason,
            "jobs": self.jobs,
            "total_seconds": round(self.elapsed(), 1),
            "steps": [
                {"what": step.what, "seconds": round(step.seconds, 1), "detail": step.detail}
                for step in self.progress.steps
            ],
            "boots": boots,
        }

    def close(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._image_pool.shutdown(wait=True, cancel_futures=True)

    # -- the steps ---------------------------------------------------------------------------
    def _wheel(self) -> Path:
        started = time.monotonic()
        wheel = images.build_wheel(images.CACHE / "wheel")
        self.progress.add("wheel", time.monotonic() - started, wheel.name)
        return wheel

    def _image(self, release: str, wheel: Future[Path], mirror: str) -> images.Image:
        built = images.build_image(images.RELEASES[release], wheel.result(), mirror)
        self.progress.add(f"image {release}", built.seconds, "built" if built.built else "cached")
        return built

    def _probe(self, built: Dict[str, Future[images.Image]]) -> str:
        forced = os.environ.get("CC_IMDS_BOX_ACCEL", "")
        if forced:
            self.progress.accel, self.progress.accel_reason = forced, "CC_IMDS_BOX_ACCEL"
            return forced
        kernel = next(iter(built.values())).result().kernel
        started = time.monotonic()
        works, reason = vm.probe_kvm(kernel)
        accel = "kvm" if works else "tcg"
        self.progress.accel, self.progress.accel_reason = accel, reason
        self.progress.add("accelerator", time.monotonic() - started, f"{accel.upper()} ({reason})")
        return accel

    def _chain(
        self, release: str, chain: Chain, boots: List[str], index: int, built: Future[images.Image]
    ) -> None:
        """Boot `boots[index]` of a chain (the first copies the image), then queue the next."""
        futures = [self.boots[(release, chain.name, b)] for b in boots]
        try:
            image = built.result()
            assert self._accel is not None
            accel = self._accel.result()
            directory = RUNS / f"{release}-{chain.name}"
            disk = directory / "disk.raw"
            if index == 0:
                vm.copy_disk(image.disk, disk)
            name = boots[index]
            futures[index].set_result(self._boot(release, chain, name, image, disk, directory / name, accel))
            if index + 1 < len(boots):
                self._pool.submit(self._chain, release, chain, boots, index + 1, built)
            else:
                disk.unlink()  # a passing chain's disk is 2 GB (sparse) of nothing worth keeping
        except BaseException as exc:  # every waiting test hears about it (a closed pool included)
            for future in futures:
                if not future.done():
                    future.set_exception(exc)

    def _boot(
        self, release: str, chain: Chain, name: str, image: images.Image, disk: Path, directory: Path, accel: str
    ) -> BootResult:
        directory.mkdir(parents=True, exist_ok=True)
        config = chain.boot_config(name)
        (directory / "boot.json").write_text(json.dumps(config, indent=1))
        vm.put_file(disk, json.dumps(config).encode(), "/etc/box/boot.json")
        serial = directory / "serial.log"
        ran = vm.boot(disk, image.kernel, accel=accel, serial_log=serial, uuid=chain.uuid, timeout=BOOT_TIMEOUT,
                      cancel=self._cancel)
        vm.check_fs(disk)
        vm.get_tree(disk, f"/var/lib/box/results/{name}", directory)
        copied = directory / name
        if copied.exists():
            copied.rename(directory / "results")
        vm.get_file(disk, "/var/log/cloud-init.log", directory / "cloud-init.log")
        result = BootResult(release, chain, name, directory, ran.seconds, accel, ran.cpu_seconds)
        if not (result.results / "done").exists():
            raise vm.BootFailed(f"{result!r} powered off without collecting its results\n{result.failure_context()}")
        detail = f"{accel.upper()}, qemu CPU {ran.cpu_seconds:.0f} s"
        self.progress.add(f"boot {release} {chain.name}/{name}", ran.seconds, detail)
        return result
