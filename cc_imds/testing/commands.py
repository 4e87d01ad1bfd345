"""`cc-imds emulate` (the IMDS emulator as a server of its own) and `cc-imds demo` (the boot
run's pipeline, applied to the bundled examples against the emulator).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CcImdsError
from ..imds.tree import load_tree
from ..signals import StopRequest
from .emulator import Emulator

if TYPE_CHECKING:
    import argparse


def emulate_command(args: argparse.Namespace) -> int:
    """Serve a metadata tree on loopback (or --host) as IMDS does, until SIGTERM or SIGINT."""
    tree = load_tree(args.tree, tags_enabled=not args.no_tags)
    # SIGTERM and SIGINT stop it cleanly from here on, whatever the process inherited (a
    # background job starts with SIGINT ignored).
    with StopRequest() as stop:
        try:
            emulator = Emulator(tree, host=args.host, port=args.port, mode=args.mode)
        except OSError as exc:
            raise CcImdsError(f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc}") from None
        emulator.latency = args.latency
        if args.credential_lifetime:
            emulator.rotate_credentials_every(args.credential_lifetime)
        control = None
        try:
            if args.control_port is not None:
                from .control import ControlServer

                try:
                    control = ControlServer(emulator, host=args.host, port=args.control_port).start()
                except (ValueError, OSError) as exc:
                    print(f"cc-imds: control endpoint: {exc}", file=sys.stderr)
                    return 2
            emulator.start()  # listening before the banner says so
            print(f"IMDS emulator ({args.mode}) listening on {emulator.url}", flush=True)
            if control is not None:
                print(f"control endpoint on {control.url} (see docs/after-boot.md: Rehearsing after-boot changes)",
                      flush=True)
            stop.wait()
        finally:
            if control is not None:
                control.stop()
            emulator.stop()
    return 0


def examples_dir() -> Path:
    """The bundled example declarations: installed in the package, or in a source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "examples", package.parent / "examples"):
        if candidate.is_dir():
            return candidate
    raise CcImdsError("the bundled examples are not installed")


def demo_command(args: argparse.Namespace) -> int:
    """The bundled examples applied, as the boot run would, against the emulator serving the
    bundled tree; each file written, and the requests it took, shown."""
    import tempfile

    from ..declaration.build import documents_from_file
    from ..pipeline import RunOptions, apply, gather

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="cc-imds-demo-"))
    with Emulator(load_tree()) as emulator:
        print(f"IMDS emulator on {emulator.url} (bundled tree); writing under {root}\n")
        for example in sorted(examples_dir().glob("*.yaml")):
            options = RunOptions(endpoint=emulator.url, root=str(root), lock_path=str(root / ".cc-imds.lock"))
            changes = apply(gather(documents=documents_from_file(example)), options)
            print(f"== {example.name}: {emulator.count('PUT')} PUT, {emulator.count('GET')} GET")
            emulator.clear_log()
            for change in changes:
                print(f"--- {change.path} ({change.action}, mode {change.mode:04o})")
                if change.sensitive:
                    print("(holds sensitive values: not shown)")
                else:
                    print(Path(change.path).read_text(encoding="utf-8"), end="")
            print()
    print(f"Files are under {root}")
    return 0
