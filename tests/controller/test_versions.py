"""The verdict on the Gateway API CRDs' bundle-version annotation (gw.controller.versions), without a cluster."""

from __future__ import annotations

import pytest

from gw.controller.versions import Verdict, crd_names, judge
from tests.controller import cluster


def verdict(*versions: str | None) -> Verdict:
    crds = [cluster.crd(plural, v) for plural, v in zip(cluster.GATEWAY_API_CRDS, versions, strict=True)]
    return judge({c["metadata"]["name"]: c for c in crds})


def test_the_crds_judged_are_those_of_the_kinds_the_controller_reads() -> None:
    expected = (*cluster.GATEWAY_API_CRDS, *cluster.OPTIONAL_CRDS)
    assert crd_names() == sorted(f"{p}.gateway.networking.k8s.io" for p in expected)


@pytest.mark.parametrize("version", ["v1.0.0", "v1.6.1", "v1.7.0-rc.1", "v1.99.3"])
def test_v1_bundles_are_supported(version: str) -> None:
    v = verdict(version, version, "v1.6.1", "v1.6.1")
    assert (v.status, v.reason, v.refused) == ("True", "SupportedVersion", False)
    assert version in v.message


@pytest.mark.parametrize("version", ["v0.8.1", "v0.5.0", "v2.0.0", "v2.0.0-rc.1"])
def test_bundles_outside_v1_refuse_the_class(version: str) -> None:
    v = verdict("v1.6.1", version, "v1.6.1", "v1.6.1")
    assert (v.status, v.reason, v.refused) == ("False", "UnsupportedVersion", True)
    assert f"gateways.gateway.networking.k8s.io is at {version}" in v.message


@pytest.mark.parametrize("version", [None, "", "1.6.1", "main", "v1.6"])
def test_a_missing_or_unrecognised_annotation_is_unsupported_but_served(version: str | None) -> None:
    v = verdict("v1.6.1", "v1.6.1", version, "v1.6.1")
    assert (v.status, v.reason, v.refused) == ("False", "UnsupportedVersion", False)
    assert "httproutes.gateway.networking.k8s.io" in v.message and "best-effort" in v.message


def test_an_out_of_range_crd_outweighs_an_unannotated_one() -> None:
    assert verdict(None, "v2.1.0", "v1.6.1", "v1.6.1").refused


def test_unreadable_crds_are_unknown_and_served() -> None:
    v = judge({}, "403: forbidden")
    assert (v.status, v.reason, v.refused) == ("Unknown", "Pending", False)
    assert "403: forbidden" in v.message
