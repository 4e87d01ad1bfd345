"""Names for scanned values (`scan --suggest`): valid, readable, unique per source, however
odd the path. Apart from tests/test_scan.py, which the RPM's %check runs without hypothesis."""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

from hypothesis import given
from hypothesis import strategies as st

from cc_imds.tools.scan import ValueNames


def test_value_names() -> None:
    names = ValueNames()
    assert names.name("meta-data/public-keys/0") == "public_keys_0"
    assert names.name("meta-data/public-keys/0") == "public_keys_0"  # the same source, the same name
    assert names.name("meta-data/a/0/vpc-id") == "vpc_id"
    assert names.name("meta-data/b/0/vpc-id") == "b_0_vpc_id"
    assert names.name("meta-data/c/0/vpc-id", hint="VPC") == "vpc"
    assert names.name("meta-data/d/0/vpc-id", hint="VPC") == "d_0_vpc_id"
    assert names.name("meta-data/x") == "x"
    assert names.name("meta-data/x", key="x") == "meta_data_x"
    assert names.name("meta-data/x", key="meta-data-x") == "meta_data_x_2"  # every candidate taken: numbered
    assert names.name("meta-data/0/1") == "meta_data_0_1"
    assert names.name("dynamic/instance-identity/document", key="region") == "region"
    assert names.name("meta-data/placement/region") == "placement_region"
    assert names.name("meta-data/tags/instance/Ümlaut-Ä") == "mlaut"
    assert names.name("meta-data/tags/instance/---") == "instance"


segments = st.text(st.sampled_from("ab0:-._Ü"), min_size=1, max_size=4)


@given(st.lists(st.tuples(st.lists(segments, min_size=1, max_size=4), st.none() | st.sampled_from(["X", "x_1", "9"])),
                max_size=12))
def test_value_names_are_valid_unique_and_stable(sources: List[Tuple[List[str], object]]) -> None:
    names = ValueNames()
    given_names: Dict[str, str] = {}
    for parts, hint in sources:
        path = "meta-data/" + "/".join(parts)
        name = names.name(path, hint=hint)  # type: ignore[arg-type]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
        assert given_names.setdefault(path, name) == name
    assert len(set(given_names.values())) == len(given_names)
