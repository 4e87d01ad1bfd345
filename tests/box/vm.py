"""Booting a disk under qemu, and reading and writing its files while the VM is off.

The VM has no network device at all (`-nic none`): IMDS runs inside it, on `lo`. Its DMI
says Amazon EC2 (a uuid starting with `ec2` and a serial equal to it), which is how
cloud-init's Ec2 datasource recognises AWS. It runs on KVM when KVM can boot a kernel on
this host, and under TCG (emulation) otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from tests.conftest import HUNG_AFTER

QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
KVM_PROBE_SECONDS = 15.0
# `quiet`: kernel messages at the emulated serial port's speed cost seconds; systemd's
# status lines stay, so a hung boot's console still says what it waits for.
KERNEL_COMMAND_LINE = "root=/dev/nvme0n1 rw console=ttyS0 panic=-1 quiet systemd.show_status=1"


class BootFailed(Exception):
    pass


_TERMINAL_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def tail(path: Path, lines: int = 40) -> str:
    """The end of a serial log, without the console's colours and cursor moves."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    return "\n".join(_TERMINAL_CONTROL.sub("", text).splitlines()[-lines:])


def probe_kvm(kernel: Path) -> Tuple[bool, str]:
    """Can KVM run a Linux guest here? Boot the kernel with no disk: under working KVM it
    reaches its "no root" panic in a second or two. A missing /dev/kvm, a qemu error, or
    silence (some nested setups hang the guest) all mean no."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not usable"
    with tempfile.TemporaryDirectory(prefix="cc-imds-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        command = [QEMU, "-accel", "kvm", "-m", "256", "-smp", "1", "-display", "none", "-nodefaults",
                   "-no-reboot", "-serial", f"file:{serial}", "-kernel", str(kernel),
                   "-append", "console=ttyS0 panic=-1"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=KVM_PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=30)
            return False, f"a kernel under KVM gave no sign of life in {KVM_PROBE_SECONDS:.0f} s"
        log = serial.read_text(errors="replace") if serial.exists() else ""
        if "Kernel panic" in log or "VFS:" in log:
            return True, "KVM boots a kernel"
        reason = (output.strip().splitlines() or ["no kernel output"])[-1]
        return False, f"KVM failed: {reason}"


@dataclass(frozen=True)
class Ran:
    seconds: float  # wall time, boot to power-off
    cpu_seconds: float  # qemu's CPU time: what the boot costs whatever else the machine does


def boot(
    disk: Path, kernel: Path, *, accel: str, serial_log: Path, uuid: str, timeout: float,
    cancel: Optional[threading.Event] = None,
) -> Ran:
    """Boot until the guest powers itself off. Setting `cancel` stops the VM (the test
    session is ending)."""
    command = [
        QEMU, "-accel", accel, "-m", str(MEMORY_MB), "-smp", "1",
        "-display", "none", "-nodefaults", "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel), "-append", KERNEL_COMMAND_LINE,
        "-drive", f"file={disk},format=raw,if=none,id=root,cache=unsafe",
        "-device", "nvme,drive=root,serial=vol-box",
        "-nic", "none",
        "-smbios", f"type=1,manufacturer=Amazon EC2,product=m7g.large,uuid={uuid},serial={uuid}",
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        reaped = None
        try:
            while reaped is None:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    reaped = (os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime)
                elif cancel is not None and cancel.is_set():
                    raise BootFailed("cancelled: the test session is ending")
                elif time.monotonic() - started > timeout:
                    raise BootFailed(
                        f"the VM did not power off within {timeout:.0f} s ({accel.upper()}); "
                        f"serial log {serial_log}, last lines:\n{tail(serial_log)}"
                    )
                else:
                    time.sleep(0.5)
        finally:
            if reaped is None:
                process.kill()
                os.wait4(process.pid, 0)
            process.returncode = reaped[0] if reaped else -9  # reaped here, not by Popen
        output.seek(0)
        if reaped[0] != 0:
            raise BootFailed(f"qemu exited {reaped[0]}: {output.read().strip()}\n{tail(serial_log)}")
    return Ran(time.monotonic() - started, reaped[1])


# -- the disk while the VM is off --------------------------------------------------------
def copy_disk(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(source), str(target)], check=True,
                   timeout=HUNG_AFTER)


def check_fs(disk: Path) -> None:
    """Replay the journal and check: a clean poweroff leaves nothing to do, a killed VM may."""
    done = subprocess.run(["e2fsck", "-fy", str(disk)], capture_output=True, text=True, timeout=HUNG_AFTER)
    if done.returncode not in (0, 1):
        raise BootFailed(f"e2fsck {disk} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def debugfs(disk: Path, commands: List[str], *, write: bool = False) -> str:
    done = subprocess.run(
        ["debugfs", *(["-w"] if write else []), "-f", "-", str(disk)],
        input="\n".join(commands) + "\n", capture_output=True, text=True,
        timeout=HUNG_AFTER)
    if done.returncode != 0:
        raise BootFailed(f"debugfs on {disk} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stderr


def put_file(disk: Path, data: bytes, guest_path: str) -> None:
    """Write a file into the (stopped) disk, replacing any previous one, and read it back."""
    directory, name = guest_path.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="cc-imds-box-") as tmp:
        staged, back = Path(tmp) / name, Path(tmp) / "read-back"
        staged.write_bytes(data)
        staged.chmod(0o644)
        debugfs(disk, [f"cd {directory}", f"rm {name}", f"write {staged} {name}"], write=True)
        debugfs(disk, [f"dump {guest_path} {back}"])
        if not back.exists() or back.read_bytes() != data:
            raise BootFailed(f"could not write {guest_path} into {disk}")


def get_tree(disk: Path, guest_dir: str, host_dir: Path) -> Optional[Path]:
    """Copy a directory out of the disk; None if it is not there."""
    host_dir.mkdir(parents=True, exist_ok=True)
    debugfs(disk, [f"rdump {guest_dir} {host_dir}"])
    copied = host_dir / guest_dir.rstrip("/").rsplit("/", 1)[-1]
    return copied if copied.exists() else None


def get_file(disk: Path, guest_path: str, host_path: Path) -> Optional[Path]:
    host_path.parent.mkdir(parents=True, exist_ok=True)
    if host_path.exists():
        host_path.unlink()
    debugfs(disk, [f"dump {guest_path} {host_path}"])
    return host_path if host_path.exists() else None


def have_tools() -> List[str]:
    """The host tools the box needs that are missing."""
    tools = (QEMU, "mmdebstrap", "mkfs.ext4", "debugfs", "e2fsck", "chroot", "systemctl", "dpkg-query")
    return [tool for tool in tools if shutil.which(tool) is None]
