"""Contender E: adamchainz's ec2-metadata from PyPI, as a library user would use it:
one client, sequential fetches, the env file and template written by hand."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ec2_metadata import EC2Metadata


def main(base: str, count: int, out: Path) -> None:
    client = EC2Metadata()
    client.service_url = f"{base}/latest/"  # the emulator instead of 169.254.169.254
    client.metadata_url = f"{client.service_url}meta-data/"
    get = client._get_url  # the library only has named properties; generic paths need this

    def quote(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    lines = ["# Written by cc-imds from instance metadata. Local changes are overwritten.\n"]
    values = [get(f"{client.metadata_url}bench/v{i:03d}").data.decode() for i in range(count)]
    lines += [f"export V{i:03d}={quote(v)}\n" for i, v in enumerate(values)]
    for tag in sorted(client.tags):
        lines.append(f"export TAG_{re.sub(r'[^A-Za-z0-9_]', '_', tag)}={quote(client.tags[tag])}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.sh").write_text("".join(lines))
    (out / "bench.conf").write_text(f"first = {values[0]}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
