"""`cc-imds emulate`: the IMDS emulator as a server of its own, with its control endpoint.
(`cc-imds demo` runs the product against the emulator: it is composed in cli.py, which sees both.)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import CcImdsError
from ..imds.tree import load_tree
from ..signals import StopRequest
from .emulator import Emulator

if TYPE_CHECKING:
    import argparse


def emulate_command(args: argparse.Namespace) -> int:
    """Serve a metadata tree on loopback (or --host) as IMDS does, until SIGTERM or SIGINT."""
    from . import scenario

    tree = load_tree(args.tree, tags_enabled=not args.no_tags)
    try:  # every timed change is checked before the port is taken: a mistake is wrong usage
        steps = scenario.steps_from_arguments(args)
    except scenario.ScenarioError as exc:
        print(f"cc-imds: {exc}", file=sys.stderr)
        return 2
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
            scenario.schedule(emulator, steps)  # `after` counts from now; what is due now is made now
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
