"""What bounded rendering costs: render() of a declaration with templates, against the
same templates rendered in this process without a child, and against env files only.

    .venv/py39/bin/python -m bench.render_cost

Forking copies the page tables of the process, so the cost grows with its size: it is also
measured with 200 MiB of extra heap, more than a cloud-init stage holds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.formats.templates import compile_template
from cc_imds.imds.tree import load_tree
from cc_imds.outputs.render import render
from cc_imds.values import TreeSource, resolve

RUNS = 200


def declaration(files: int) -> Dict[str, Any]:
    return {
        "values": {"iid": "meta-data/instance-id", "tags": "meta-data/tags/instance/",
                   "region": {"path": "dynamic/instance-identity/document", "key": "region"}},
        "env": [{"path": "/e.sh", "format": "shell", "vars": {"IID": "iid"}, "expand": {"tags": "TAG_"}}],
        "files": [{"path": f"/f{i}", "content": "id={{ iid }}\nregion={{ region }}\n"
                   "{% for k, v in tags|dictsort %}{{ k }}={{ v | shell_quote }}\n{% endfor %}"} for i in range(files)],
    }


def median_ms(step: Callable[[], Any]) -> float:
    step()
    times: List[float] = []
    for _ in range(RUNS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(label: str) -> None:
    for files in (0, 1, 10):
        decl = build_declaration([SourceDocument("bench", "imds", declaration(files))])
        values = resolve(decl, TreeSource(load_tree()))
        bounded_ms = median_ms(lambda: render(decl, values))  # noqa: B023 - measured at once

        def in_process() -> None:
            for output in decl.files:  # noqa: B023
                context = {name: values.data[name] for name in output.uses}  # noqa: B023
                "".join(compile_template(output.template).generate(context))

        print(f"{label:28} {files:2} template(s): render() {bounded_ms:6.2f} ms; "
              f"the same templates in-process {median_ms(in_process):6.2f} ms")


if __name__ == "__main__":
    measure("process as is")
    ballast = [bytearray(1024 * 1024) for _ in range(200)]  # touched pages, as a larger heap would have
    measure("with 200 MiB more heap")
    del ballast
