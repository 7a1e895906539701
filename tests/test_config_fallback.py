"""A reload keeps the running version of an object whose new version is invalid (gw.config.fallback)."""

from __future__ import annotations

from collections.abc import Callable

from gw.config import LoadResult, Snapshot, compile_sources
from gw.config.fallback import keep_running_objects
from gw.config.loader import Source
from gw.config.resources import KEPT_FILE as FILE
from tests.test_config import GATEWAY as GATEWAY_DOC
from tests.test_config import HEAD

GATEWAY = (HEAD + GATEWAY_DOC).encode()  # a GatewayClass, Backends one and two, Gateway gw on 8080


def route(name: str, path: str, extra: str = "") -> bytes:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{path: {{value: {path}}}}}], backendRefs: [{{group: gw.dev, kind: Backend, name: one}}]}}]
{extra}""".encode()


def compile_files(files: list[Source]):  # type: ignore[no-untyped-def]
    return compile_sources(files, source="test")


def keep(
    new: list[Source], result: LoadResult, running: list[Source], compile_files: Callable[[list[Source]], LoadResult]
) -> tuple[list[Source], LoadResult, list[str]]:
    """keep_running_objects on snapshots of these files; the files to serve as a list."""
    snapshot, merged, kept = keep_running_objects(
        Snapshot.of(new, "test"), result, Snapshot.of(running, "test"), lambda s: compile_files(list(s.files))
    )
    return list(snapshot.files), merged, kept


def served(result) -> set[str]:  # type: ignore[no-untyped-def]
    port = result.config.port(8080)
    return {p for p in ("/a", "/a2", "/b", "/c") if port.table.match("x", p + "/", b"GET", [], b"") is not None}


RUNNING = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a")), ("b.yaml", route("b", "/b"))]


def test_an_object_made_invalid_keeps_its_running_version_and_the_rest_reloads() -> None:
    new = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a2")), ("b.yaml", route("b", "/b", "  typo: 1\n"))]
    result = compile_files(new)
    assert served(result) == {"/a2"}  # without the fall-back, route b would be gone
    files, merged, kept = keep(new, result, RUNNING, compile_files)
    assert kept == ["HTTPRoute default/b"]
    assert served(merged) == {"/a2", "/b"}
    assert [f for f, _ in files] == ["gw.yaml", "a.yaml", "b.yaml", FILE]
    messages = [str(e) for e in merged.errors]
    assert any("b.yaml: HTTPRoute default/b: spec.typo" in m for m in messages), messages
    assert any("the running version is kept" in m for m in messages), messages


def test_the_kept_version_survives_a_second_reload_of_the_same_invalid_file() -> None:
    new = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a")), ("b.yaml", route("b", "/b", "  typo: 1\n"))]
    files, _, _ = keep(new, compile_files(new), RUNNING, compile_files)
    again = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a2")), ("b.yaml", route("b", "/b", "  typo: 1\n"))]
    files2, merged2, kept2 = keep(again, compile_files(again), files, compile_files)
    assert kept2 == ["HTTPRoute default/b"] and served(merged2) == {"/a2", "/b"}
    fixed = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a2")), ("b.yaml", route("b", "/c"))]
    files3, merged3, kept3 = keep(fixed, compile_files(fixed), files2, compile_files)
    assert kept3 == [] and served(merged3) == {"/a2", "/c"} and FILE not in [f for f, _ in files3]


def test_a_new_invalid_object_has_nothing_to_fall_back_to() -> None:
    new = [*RUNNING, ("c.yaml", route("c", "/c", "  typo: 1\n"))]
    result = compile_files(new)
    files, merged, kept = keep(new, result, RUNNING, compile_files)
    assert kept == [] and files == new and served(merged) == {"/a", "/b"}


def test_a_deleted_object_is_not_brought_back() -> None:
    new = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a"))]
    _, merged, kept = keep(new, compile_files(new), RUNNING, compile_files)
    assert kept == [] and served(merged) == {"/a"}


def test_a_route_whose_rule_became_invalid_falls_back_to_its_running_version() -> None:
    """The spec's "Fall Back" approach to a PartiallyInvalid route, on a reload."""
    bad_rule = route("b", "/c").replace(b"rules: [{", b"rules: [{headerz: [], ")
    new = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a2")), ("b.yaml", bad_rule)]
    result = compile_files(new)
    assert served(result) == {"/a2"}  # alone, route b would lose its only rule
    files, merged, kept = keep(new, result, RUNNING, compile_files)
    assert kept == ["HTTPRoute default/b"] and served(merged) == {"/a2", "/b"}  # b as it ran: /b
    (partial,) = [c for c in merged.conditions["HTTPRoute default/b"] if c.type == "PartiallyInvalid"]
    assert partial.status and partial.message.startswith("Fall Back: the running version is served; rules 0")
    assert any("headerz" in str(e) for e in merged.errors)
    # The next reload of the same files keeps it again, from the kept copy.
    _, again, kept2 = keep(new, compile_files(new), files, compile_files)
    assert kept2 == ["HTTPRoute default/b"] and served(again) == {"/a2", "/b"}


def test_a_route_that_ran_with_a_dropped_rule_is_not_kept() -> None:
    half = route("b", "/b").replace(b"rules: [{", b"rules: [{name: bad, headerz: []}, {")
    running = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a")), ("b.yaml", half)]
    new = [("gw.yaml", GATEWAY), ("a.yaml", route("a", "/a")), ("b.yaml", half.replace(b"/b", b"/c"))]
    _, merged, kept = keep(new, compile_files(new), running, compile_files)
    assert kept == [] and served(merged) == {"/a", "/c"}  # the new one, with its rule dropped


def test_a_cluster_scoped_object_keeps_its_running_version_too() -> None:
    """Labels of cluster-scoped kinds ("GatewayClass name") agree between parse and resources."""
    extra = (
        b"apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: extra}\n"
        b"spec: {controllerName: gw.dev/gateway-controller%s}\n"
    )
    running = [*RUNNING, ("extra.yaml", extra % b"")]
    new = [*RUNNING, ("extra.yaml", extra % b", typo: 1")]
    _, merged, kept = keep(new, compile_files(new), running, compile_files)
    assert kept == ["GatewayClass extra"]
    assert "GatewayClass extra" in {obj.meta.label for obj in merged.resources.objects()}
