"""The route table: hostname intersection, path matching, precedence and per-port host dispatch."""

from __future__ import annotations

import time

import pytest

from gw.routing import (
    PATH_EXACT,
    PATH_PREFIX,
    PATH_REGEX,
    ListenerRoutes,
    RouteEntry,
    RouteMatch,
    ValueMatch,
    build_table,
    hostname_matches,
    intersect_hostnames,
)


def entry(
    rule: str,
    path: str = "/",
    path_type: str = PATH_PREFIX,
    *,
    hostnames: tuple[str, ...] = (),
    method: str | None = None,
    headers: tuple[ValueMatch, ...] = (),
    query: tuple[ValueMatch, ...] = (),
    order: tuple = (0.0, "default/r", 0, 0),
) -> RouteEntry:
    return RouteEntry(hostnames, RouteMatch(path_type, path, method, headers, query), rule, order)


def table(*entries: RouteEntry, hostname: str | None = None):
    return build_table([ListenerRoutes("ns/gw/http", hostname, list(entries))])


def get(t, path: str, host: str = "example.com", method: bytes = b"GET", headers=(), query: bytes = b""):
    return t.match(host, path, method, list(headers), query)


# --- hostnames -----------------------------------------------------------------------------------


class TestHostnameMatching:
    def test_wildcard_matches_one_label(self):
        assert hostname_matches("*.example.com", "foo.example.com")

    def test_wildcard_matches_several_labels(self):
        assert hostname_matches("*.example.com", "foo.bar.example.com")

    def test_wildcard_does_not_match_the_bare_domain(self):
        assert not hostname_matches("*.example.com", "example.com")

    def test_wildcard_does_not_match_a_partial_label(self):
        assert not hostname_matches("*.example.com", "fooexample.com")

    def test_exact_matches_only_itself(self):
        assert hostname_matches("a.example.com", "a.example.com")
        assert not hostname_matches("a.example.com", "b.example.com")

    def test_narrower_wildcard_is_inside_wider(self):
        assert hostname_matches("*.example.com", "*.foo.example.com")
        assert not hostname_matches("*.foo.example.com", "*.example.com")


class TestHostnameIntersection:
    def test_no_hostnames_anywhere_means_any_host(self):
        assert intersect_hostnames(None, ()) == ()

    def test_route_without_hostnames_takes_the_listener_hostname(self):
        assert intersect_hostnames("*.example.com", ()) == ("*.example.com",)

    def test_listener_without_hostname_takes_route_hostnames(self):
        assert intersect_hostnames(None, ("a.com", "*.b.com")) == ("a.com", "*.b.com")

    def test_exact_route_hostname_inside_listener_wildcard(self):
        assert intersect_hostnames("*.example.com", ("foo.example.com",)) == ("foo.example.com",)

    def test_route_wildcard_narrows_to_exact_listener_hostname(self):
        assert intersect_hostnames("foo.example.com", ("*.example.com",)) == ("foo.example.com",)

    def test_two_wildcards_intersect_to_the_more_specific(self):
        assert intersect_hostnames("*.example.com", ("*.foo.example.com",)) == ("*.foo.example.com",)
        assert intersect_hostnames("*.foo.example.com", ("*.example.com",)) == ("*.foo.example.com",)

    def test_non_intersecting_hostnames_are_dropped(self):
        assert intersect_hostnames("*.example.com", ("foo.example.com", "bar.com")) == ("foo.example.com",)

    def test_no_intersection_at_all_is_none(self):
        assert intersect_hostnames("very.specific.com", ("other.com", "*.wildcard.io")) is None

    def test_wildcard_listener_does_not_accept_its_bare_domain(self):
        assert intersect_hostnames("*.example.com", ("example.com",)) is None


# --- paths ---------------------------------------------------------------------------------------


class TestPathPrefix:
    @pytest.mark.parametrize("path", ["/abc", "/abc/", "/abc/def", "/abc/def/ghi"])
    def test_prefix_matches_on_segment_boundaries(self, path):
        assert get(table(entry("abc", "/abc")), path) == "abc"

    @pytest.mark.parametrize("path", ["/abcd", "/ab", "/", "/xabc", "/ABC"])
    def test_prefix_does_not_match_inside_a_segment_or_another_case(self, path):
        assert get(table(entry("abc", "/abc")), path) is None

    @pytest.mark.parametrize("path", ["/abc", "/abc/", "/abc/def"])
    def test_trailing_slash_of_the_prefix_is_ignored(self, path):
        assert get(table(entry("abc", "/abc/")), path) == "abc"

    def test_trailing_slash_prefix_still_respects_boundaries(self):
        assert get(table(entry("abc", "/abc/")), "/abcd") is None

    @pytest.mark.parametrize("path", ["/", "/x", "/x/y/z", "/x/"])
    def test_root_prefix_matches_everything(self, path):
        assert get(table(entry("root", "/")), path) == "root"

    def test_non_origin_form_target_matches_nothing(self):
        assert get(table(entry("root", "/")), "*") is None

    def test_longest_prefix_wins(self):
        t = table(entry("short", "/a"), entry("long", "/a/b"), entry("root", "/"))
        assert get(t, "/a/b/c") == "long"
        assert get(t, "/a/bc") == "short"
        assert get(t, "/b") == "root"

    def test_longest_prefix_wins_regardless_of_declaration_order(self):
        t = table(entry("root", "/", order=(0, "a/a", 0, 0)), entry("long", "/a/b", order=(9, "z/z", 5, 0)))
        assert get(t, "/a/b") == "long"


class TestExactPath:
    def test_exact_matches_only_the_same_path(self):
        t = table(entry("x", "/foo", PATH_EXACT))
        assert get(t, "/foo") == "x"
        assert get(t, "/foo/") is None
        assert get(t, "/foo/bar") is None
        assert get(t, "/fo") is None

    def test_exact_beats_any_prefix(self):
        t = table(entry("prefix", "/foo"), entry("exact", "/foo", PATH_EXACT))
        assert get(t, "/foo") == "exact"
        assert get(t, "/foo/x") == "prefix"

    def test_exact_beats_a_prefix_with_more_conditions(self):
        t = table(entry("prefix", "/foo", method="GET"), entry("exact", "/foo", PATH_EXACT))
        assert get(t, "/foo") == "exact"


class TestRegularExpression:
    def test_regex_must_match_the_whole_path(self):
        t = table(entry("re", r"/v[0-9]+/items", PATH_REGEX))
        assert get(t, "/v2/items") == "re"
        assert get(t, "/v2/items/1") is None

    def test_regex_sits_between_exact_and_prefix(self):
        t = table(entry("prefix", "/v1"), entry("re", r"/v1/.*", PATH_REGEX), entry("exact", "/v1/x", PATH_EXACT))
        assert get(t, "/v1/x") == "exact"
        assert get(t, "/v1/y") == "re"
        assert get(t, "/v1") == "prefix"


# --- precedence beyond the path ------------------------------------------------------------------


class TestConditions:
    def test_method_must_match(self):
        t = table(entry("post", "/", method="POST"))
        assert get(t, "/", method=b"POST") == "post"
        assert get(t, "/", method=b"GET") is None

    def test_method_match_beats_plain_match_of_same_prefix(self):
        t = table(
            entry("any", "/x", order=(0, "a/a", 0, 0)), entry("post", "/x", method="POST", order=(9, "z/z", 0, 0))
        )
        assert get(t, "/x", method=b"POST") == "post"
        assert get(t, "/x", method=b"GET") == "any"

    def test_longer_prefix_beats_method_match(self):
        t = table(entry("method", "/a", method="GET"), entry("longer", "/a/b"))
        assert get(t, "/a/b", method=b"GET") == "longer"

    def test_header_names_are_case_insensitive_values_exact(self):
        t = table(entry("h", headers=(ValueMatch("X-Env", "canary"),)))
        assert get(t, "/", headers=[(b"x-env", b"canary")]) == "h"
        assert get(t, "/", headers=[(b"X-ENV", b"canary")]) == "h"
        assert get(t, "/", headers=[(b"x-env", b"Canary")]) is None
        assert get(t, "/") is None

    def test_header_regex(self):
        t = table(entry("h", headers=(ValueMatch("x-version", r"v\d+", "RegularExpression"),)))
        assert get(t, "/", headers=[(b"x-version", b"v12")]) == "h"
        assert get(t, "/", headers=[(b"x-version", b"v12a")]) is None

    def test_more_header_matches_win(self):
        one = (ValueMatch("a", "1"),)
        two = (ValueMatch("a", "1"), ValueMatch("b", "2"))
        t = table(entry("one", headers=one, order=(0, "a/a", 0, 0)), entry("two", headers=two, order=(9, "z/z", 0, 0)))
        assert get(t, "/", headers=[(b"a", b"1"), (b"b", b"2")]) == "two"
        assert get(t, "/", headers=[(b"a", b"1")]) == "one"

    def test_method_beats_header_count(self):
        t = table(
            entry("headers", headers=(ValueMatch("a", "1"), ValueMatch("b", "2")), order=(0, "a/a", 0, 0)),
            entry("method", method="GET", order=(9, "z/z", 0, 0)),
        )
        assert get(t, "/", headers=[(b"a", b"1"), (b"b", b"2")]) == "method"

    def test_header_count_beats_query_count(self):
        t = table(
            entry("query", query=(ValueMatch("q", "1"), ValueMatch("r", "2")), order=(0, "a/a", 0, 0)),
            entry("header", headers=(ValueMatch("h", "1"),), order=(9, "z/z", 0, 0)),
        )
        assert get(t, "/", headers=[(b"h", b"1")], query=b"q=1&r=2") == "header"

    def test_query_params_exact_and_first_occurrence(self):
        t = table(entry("q", query=(ValueMatch("env", "prod"),)))
        assert get(t, "/", query=b"a=b&env=prod") == "q"
        assert get(t, "/", query=b"env=prod&env=dev") == "q"
        assert get(t, "/", query=b"env=dev&env=prod") is None
        assert get(t, "/", query=b"ENV=prod") is None

    def test_query_values_are_percent_decoded(self):
        t = table(entry("q", query=(ValueMatch("name", "a b"),)))
        assert get(t, "/", query=b"name=a%20b") == "q"

    def test_only_the_first_match_for_a_repeated_header_name_counts(self):
        t = table(entry("h", headers=(ValueMatch("a", "1"), ValueMatch("A", "2"))))
        assert get(t, "/", headers=[(b"a", b"1")]) == "h"

    def test_failed_conditions_fall_through_to_a_shorter_prefix(self):
        t = table(entry("post", "/api", method="POST"), entry("root", "/"))
        assert get(t, "/api/x", method=b"GET") == "root"

    def test_repeated_headers_compare_as_one_joined_value(self):
        t = table(entry("h", headers=(ValueMatch("x", "a,b"),)))
        assert get(t, "/", headers=[(b"x", b"a"), (b"x", b"b")]) == "h"


class TestTieBreaks:
    def test_oldest_route_wins(self):
        t = table(entry("new", order=(200.0, "a/a", 0, 0)), entry("old", order=(100.0, "z/z", 0, 0)))
        assert get(t, "/") == "old"

    def test_then_namespace_name_alphabetical(self):
        t = table(entry("b", order=(100.0, "ns/b", 0, 0)), entry("a", order=(100.0, "ns/a", 0, 0)))
        assert get(t, "/") == "a"

    def test_then_rule_order(self):
        t = table(entry("second", order=(0, "ns/r", 1, 0)), entry("first", order=(0, "ns/r", 0, 0)))
        assert get(t, "/") == "first"


# --- hosts ---------------------------------------------------------------------------------------


class TestHostDispatch:
    def test_exact_host_route_beats_catch_all_route(self):
        t = table(entry("any"), entry("foo", hostnames=("foo.com",)))
        assert get(t, "/", host="foo.com") == "foo"
        assert get(t, "/", host="bar.com") == "any"

    def test_longest_wildcard_wins(self):
        t = table(
            entry("wide", hostnames=("*.example.com",)),
            entry("narrow", hostnames=("*.foo.example.com",)),
            entry("exact", hostnames=("a.foo.example.com",)),
        )
        assert get(t, "/", host="a.foo.example.com") == "exact"
        assert get(t, "/", host="b.foo.example.com") == "narrow"
        assert get(t, "/", host="x.b.foo.example.com") == "narrow"
        assert get(t, "/", host="b.example.com") == "wide"
        assert get(t, "/", host="example.com") is None
        assert get(t, "/", host="foo.example.com") == "wide"

    def test_more_specific_hostname_wins_over_better_path(self):
        t = table(
            entry("wild", "/api/v1", hostnames=("*.example.com",)), entry("exact", "/", hostnames=("a.example.com",))
        )
        assert get(t, "/api/v1", host="a.example.com") == "exact"

    def test_less_specific_hostname_is_tried_when_specific_routes_do_not_match(self):
        t = table(
            entry("wild", "/", hostnames=("*.example.com",)), entry("exact", "/api", hostnames=("a.example.com",))
        )
        assert get(t, "/other", host="a.example.com") == "wild"

    def test_unknown_host_without_catch_all_matches_nothing(self):
        assert get(table(entry("foo", hostnames=("foo.com",))), "/", host="bar.com") is None

    def test_empty_host_reaches_only_catch_all(self):
        t = table(entry("foo", hostnames=("foo.com",)), entry("any", "/x"))
        assert get(t, "/x", host="") == "any"


class TestListenersSharingAPort:
    def listeners(self):
        return build_table(
            [
                ListenerRoutes("ns/gw/any", None, [entry("any-listener")]),
                ListenerRoutes("ns/gw/wild", "*.example.com", [entry("wild-listener", hostnames=("*.example.com",))]),
                ListenerRoutes(
                    "ns/gw/foo", "foo.example.com", [entry("foo-listener", "/only", hostnames=("foo.example.com",))]
                ),
            ]
        )

    def test_most_specific_listener_serves_the_host(self):
        t = self.listeners()
        assert get(t, "/only", host="foo.example.com") == "foo-listener"
        assert get(t, "/", host="bar.example.com") == "wild-listener"
        assert get(t, "/", host="other.org") == "any-listener"

    def test_listeners_are_isolated(self):
        # foo.example.com selects its own listener; routes of the others never see it.
        assert get(self.listeners(), "/elsewhere", host="foo.example.com") is None

    def test_route_wildcard_under_catch_all_listener_does_not_steal_from_wildcard_listener(self):
        t = build_table(
            [
                ListenerRoutes("ns/gw/any", None, [entry("any", hostnames=("*.foo.example.com",))]),
                ListenerRoutes("ns/gw/wild", "*.example.com", [entry("wild", hostnames=("*.example.com",))]),
            ]
        )
        assert get(t, "/", host="a.foo.example.com") == "wild"

    def test_listener_without_routes_still_claims_its_host(self):
        t = build_table([ListenerRoutes("ns/gw/any", None, [entry("any")]), ListenerRoutes("ns/gw/foo", "foo.com", [])])
        assert get(t, "/", host="foo.com") is None
        assert get(t, "/", host="bar.com") == "any"


class TestScale:
    def test_lookup_does_not_grow_with_route_count(self):
        entries = [entry(f"r{i}", f"/svc{i}/api", hostnames=(f"h{i}.example.com",)) for i in range(10_000)]
        entries += [entry(f"p{i}", f"/p{i}") for i in range(10_000)]
        t = table(*entries)
        assert get(t, "/svc7777/api/x", host="h7777.example.com") == "r7777"
        assert get(t, "/p9999/a/b", host="unknown.org") == "p9999"
        n = 20_000
        start = time.perf_counter()
        for _ in range(n):
            t.match("h7777.example.com", "/svc7777/api/users/42", b"GET", [], b"")
        per_lookup = (time.perf_counter() - start) / n
        # The bar is 10 µs at 10 000 routes; leave room for slow CI machines.
        assert per_lookup < 20e-6

    def test_build_is_fast_with_many_hosts(self):
        entries = [entry(f"r{i}", hostnames=(f"h{i}.example.com",)) for i in range(10_000)]
        start = time.perf_counter()
        build_table([ListenerRoutes("l", "*.example.com", entries)])
        assert time.perf_counter() - start < 5.0
