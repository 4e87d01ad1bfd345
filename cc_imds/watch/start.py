"""`cc-imds watch` started from the command line: logging fit for the journal, the declaration
to read (and read again on reload), the lock shared with `apply`, then the Watcher.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List

from ..declaration.build import SourceDocument, documents_from_file
from ..errors import DeclarationError
from ..files.lock import default_lock_path
from ..pipeline import gather
from .handoff import saved_cloud_config
from .watcher import Watcher, WatchOptions

if TYPE_CHECKING:
    import argparse


def _log_for_the_journal(debug: bool) -> None:
    """The watcher logs every change (INFO). Under systemd (JOURNAL_STREAM is set), a <N>
    prefix gives each line its journal priority."""
    import logging

    class JournalFormatter(logging.Formatter):
        PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

        def format(self, record: logging.LogRecord) -> str:
            return f"<{self.PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"

    logging.basicConfig(format="cc-imds: %(levelname)s: %(message)s", stream=sys.stderr)  # no-op after --debug
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if os.environ.get("JOURNAL_STREAM"):
        for handler in root.handlers:
            handler.setFormatter(JournalFormatter("%(message)s"))


def watch_command(args: argparse.Namespace) -> int:
    """Keep outputs current after boot, until stopped. The declaration is read again on a
    reload: drop-ins (args.conf_dir, as the parser resolved it), then FILE or the `imds:` key
    the boot run saved."""
    _log_for_the_journal(args.debug)
    conf_dir = args.conf_dir
    explicit = Path(args.file) if args.file else None

    def load() -> List[SourceDocument]:
        """Drop-ins, then FILE or this boot's saved `imds:` key: the boot run's own order."""
        if explicit is not None:
            docs = gather(conf_dir=conf_dir, documents=documents_from_file(explicit))
        else:
            docs = gather(saved_cloud_config(), conf_dir)
        if not docs:
            raise DeclarationError([f"no declaration: no *.yaml in {conf_dir}, and the boot run saved no "
                                    "imds: key (give a FILE to watch another declaration)"])
        return docs

    options = WatchOptions(endpoint=args.endpoint, lock_path=args.lock or default_lock_path(),
                           owns_marker=explicit is None)
    return Watcher(load, options).run()
