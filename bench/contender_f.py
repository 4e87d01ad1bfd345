"""Contender F: botocore's IMDSFetcher (what boto3 uses for instance credentials), as a library
user would reach generic paths with it: one token, sequential fetches, files written by hand."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from botocore.utils import IMDSFetcher


def main(base: str, count: int, out: Path) -> None:
    fetcher = IMDSFetcher(timeout=2, num_attempts=1, base_url=base)
    token = fetcher._fetch_metadata_token()  # the public API covers credentials only; paths need these

    def get(path: str) -> str:
        return str(fetcher._get_request(f"latest/{path}", None, token).content.decode())

    def quote(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    lines = ["# Written by cc-imds from instance metadata. Local changes are overwritten.\n"]
    values = [get(f"meta-data/bench/v{i:03d}") for i in range(count)]
    lines += [f"export V{i:03d}={quote(v)}\n" for i, v in enumerate(values)]
    tags = get("meta-data/tags/instance/").split("\n")
    for tag in sorted(t for t in tags if t):
        value = get(f"meta-data/tags/instance/{tag}")
        lines.append(f"export TAG_{re.sub(r'[^A-Za-z0-9_]', '_', tag)}={quote(value)}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.sh").write_text("".join(lines))
    (out / "bench.conf").write_text(f"first = {values[0]}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
