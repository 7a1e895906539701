"""The balancers of BackendTrafficPolicy.loadBalancer: distribution by weight, two choices over
in-flight counts, Maglev's determinism and minimal disruption, slow start's ramp, and the picker's
keys from an exchange."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from gw.balancing import maglev as maglev_module
from gw.balancing.least_request import LeastRequest
from gw.balancing.maglev import Maglev, maglev_table, stable_hash
from gw.balancing.picker import Picker, cookie_value, query_values
from gw.balancing.resilience import BackendState
from gw.balancing.slow_start import LiveRoundRobin, ramped
from gw.balancing.weighted_random import WeightedRandom
from gw.config.backend_policy import ConsistentHash, LoadBalancer, Resilience
from gw.config.model import Backend, Endpoint

KEYS = [b"user-%d" % i for i in range(100_000)]


def labels(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250}:8080" for i in range(n)]


class TestWeightedRandom:
    def test_draws_in_proportion_to_weight_and_never_a_zero_weight(self) -> None:
        wr = WeightedRandom(["a", "b", "c", "d"], [1, 3, 0, 6], random.Random(1))
        counts = Counter(wr.next() for _ in range(100_000))
        assert "c" not in counts
        for item, weight in (("a", 0.1), ("b", 0.3), ("d", 0.6)):
            assert abs(counts[item] / 100_000 - weight) < 0.01

    def test_all_weights_zero_picks_nothing(self) -> None:
        wr = WeightedRandom(["a"], [0])
        assert wr.next() is None and len(wr) == 0


class TestLeastRequest:
    def test_an_endpoint_with_requests_in_flight_gets_fewer_new_ones(self) -> None:
        lr = LeastRequest(["a", "b"], ["a", "b"], [1, 1], rng=random.Random(2))
        for _ in range(5):
            lr.acquire("a")
        counts = Counter(lr.next() for _ in range(10_000))
        # Two equal-weight draws differ half the time, and then b wins: about 3/4 to b.
        assert 0.70 < counts["b"] / 10_000 < 0.80

    def test_picks_keep_in_flight_counts_level(self) -> None:
        names = [str(i) for i in range(8)]
        lr = LeastRequest(names, names, [1] * 8, rng=random.Random(3))
        for _ in range(800):
            lr.acquire(lr.next())  # type: ignore[arg-type]
        # (a random pick spreads 800 over 8 with a spread of about 25)
        assert max(lr.in_flight.values()) - min(lr.in_flight.values()) <= 6

    def test_weight_counts_as_capacity(self) -> None:
        lr = LeastRequest(["big", "small"], ["big", "small"], [3, 1], rng=random.Random(4))
        for _ in range(4000):
            lr.acquire(lr.next())  # type: ignore[arg-type]
        assert 2.5 < lr.in_flight["big"] / lr.in_flight["small"] < 3.5

    def test_release_undoes_acquire(self) -> None:
        lr = LeastRequest(["a"], ["a"], [1])
        lr.acquire("a")
        lr.release("a")
        assert lr.in_flight == {}


class TestMaglev:
    def test_the_table_fills_every_slot_evenly(self) -> None:
        counts = Counter(maglev_table(labels(10), [1] * 10, 65537))
        assert sum(counts.values()) == 65537
        assert max(counts.values()) - min(counts.values()) <= 1

    def test_weights_share_the_table(self) -> None:
        counts = Counter(maglev_table(labels(3), [1, 2, 4], 65537))
        assert [round(counts[i] / 65537 * 7, 2) for i in range(3)] == [1.0, 2.0, 4.0]

    def test_the_table_depends_on_the_endpoint_set_not_its_order(self) -> None:
        names = labels(7)
        shuffled = names[:]
        random.Random(5).shuffle(shuffled)
        a, b = Maglev(names, names, [1] * 7, 65537), Maglev(shuffled, shuffled, [1] * 7, 65537)
        assert all(a.pick(k) == b.pick(k) for k in KEYS[:5000])

    def test_another_process_builds_the_same_table(self) -> None:
        code = "from gw.balancing.maglev import maglev_table as t; print(hash(tuple(t(%r, [1]*5, 65537))))"
        runs = {
            subprocess.run([sys.executable, "-c", code % labels(5)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)
        }  # hash() of a tuple of ints is not salted: equal output means equal tables
        assert len(runs) == 1
        assert runs.pop().strip() == str(hash(tuple(maglev_table(labels(5), [1] * 5, 65537))))

    @pytest.mark.parametrize("n", [3, 5, 10])
    def test_adding_one_endpoint_to_n_moves_about_one_in_n_plus_one_keys(self, n: int) -> None:
        before, after = labels(n), labels(n + 1)
        old = Maglev(before, before, [1] * n, 65537)
        new = Maglev(after, after, [1] * (n + 1), 65537)
        moved = sum(1 for k in KEYS if old.pick(k) != new.pick(k))
        assert moved / len(KEYS) <= 1 / n + 0.02
        # The keys that moved went to the new endpoint, nearly all of them.
        to_new = sum(1 for k in KEYS if old.pick(k) != new.pick(k) and new.pick(k) == after[-1])
        assert to_new / moved > 0.9

    def test_keys_spread_evenly(self) -> None:
        names = labels(4)
        maglev = Maglev(names, names, [1] * 4, 65537)
        counts = Counter(maglev.pick(k) for k in KEYS)
        assert all(abs(c / len(KEYS) - 0.25) < 0.01 for c in counts.values())

    def test_an_unchanged_endpoint_set_takes_the_previous_table_over(self) -> None:
        names = labels(4)
        old = Maglev(names, names, [1] * 4, 65537)
        endpoints = [Endpoint(label.split(":")[0], 8080) for label in names]
        new = Maglev(endpoints, names, [1] * 4, 65537, old)  # type: ignore[arg-type]
        assert new.labels is old.labels
        assert all(new.pick(k).label == old.pick(k) for k in KEYS[:1000])  # type: ignore[union-attr]

    def test_a_remembered_slot_is_the_keys_hash_and_the_memory_is_bounded(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(maglev_module, "SLOT_MEMO", 100)
        names = labels(4)
        maglev = Maglev(names, names, [1] * 4, 65537)
        for _ in range(2):  # the second round partly from memory, partly hashed again
            for k in KEYS[:300]:
                assert maglev.pick(k) == maglev.table[stable_hash(k) % 65537]
        assert len(maglev._slots) == 100


class TestSlowStart:
    def test_the_weight_ramps_linearly_from_a_tenth(self) -> None:
        assert ramped(10, 0.0, 30.0) == 1.0
        assert ramped(10, 15.0, 30.0) == 5.0
        assert ramped(10, 30.0, 30.0) == 10
        assert ramped(10, 99.0, 0.0) == 10

    def test_live_round_robin_follows_new_weights(self) -> None:
        rr = LiveRoundRobin(["a", "b"], [1, 1])
        assert Counter(rr.next() for _ in range(100)) == {"a": 50, "b": 50}
        rr.reweight([9, 1])
        assert Counter(rr.next() for _ in range(100)) == {"a": 90, "b": 10}


class FakeExchange:
    """What the picker reads of an exchange."""

    def __init__(self, started: float = 1e9, client: bytes = b"", fields: Any = (), query: bytes = b"") -> None:
        self.started, self.client_host, self._fields, self.query = started, client, list(fields), query
        self.counted: str | None = None

    def fields(self) -> list[tuple[bytes, bytes]]:
        return self._fields

    def field(self, lname: bytes) -> bytes | None:
        return next((v for n, v in self._fields if n.lower() == lname), None)


def picker(lb: LoadBalancer, n: int = 4, *, down: set[str] = frozenset(), ready: float = 0.0) -> Picker:  # type: ignore[assignment]
    endpoints = [Endpoint(f"10.0.0.{i}", 80) for i in range(n)]
    return Picker(lb, endpoints, lambda e, now: e.label not in down, lambda label: ready)


HEADER = LoadBalancer("ConsistentHash", ConsistentHash("Header", "x-user"))


class TestPicker:
    def test_a_header_key_always_reaches_the_same_endpoint(self) -> None:
        p = picker(HEADER)
        for user in (b"alice", b"bob", b"carol"):
            picks = {p.pick(FakeExchange(fields=[(b"X-User", user)])).label for _ in range(20)}  # type: ignore[union-attr]
            assert len(picks) == 1

    def test_a_request_without_the_key_is_balanced_round_robin(self) -> None:
        p = picker(HEADER)
        assert len({p.pick(FakeExchange()).label for _ in range(4)}) == 4  # type: ignore[union-attr]

    def test_an_unusable_endpoint_moves_only_its_keys(self) -> None:
        keys = [b"k%d" % i for i in range(2000)]
        whole = picker(HEADER)
        before = {k: whole.pick(FakeExchange(fields=[(b"x-user", k)])).label for k in keys}  # type: ignore[union-attr]
        p = picker(HEADER, down={"10.0.0.1:80"})
        after = {k: p.pick(FakeExchange(fields=[(b"x-user", k)])).label for k in keys}  # type: ignore[union-attr]
        assert "10.0.0.1:80" not in after.values()
        assert all(after[k] == before[k] for k in keys if before[k] != "10.0.0.1:80")

    def test_source_ip_cookie_and_query_keys(self) -> None:
        assert (
            picker(LoadBalancer("ConsistentHash", ConsistentHash("SourceIP"))).key(FakeExchange(client=b"1.2.3.4"))
            == b"1.2.3.4"
        )
        assert cookie_value([(b"Cookie", b"a=1; sid=xyz; b=2")], b"sid") == b"xyz"
        assert cookie_value([(b"Cookie", b"a=1")], b"sid") is None
        assert query_values(b"org=o&user=u&user=v", [b"user", b"org"]) == b"user=u\x00org=o"
        assert query_values(b"x=1", [b"user"]) is None

    @pytest.mark.parametrize("lb", [HEADER, LoadBalancer("Random"), LoadBalancer("LeastRequest")])
    def test_health_is_asked_only_while_an_endpoint_is_not_known_usable(self, lb: LoadBalancer) -> None:
        endpoints = [Endpoint(f"10.0.0.{i}", 80) for i in range(4)]
        asked: list[str] = []
        ejected: set[str] = set()

        def usable(e: Endpoint, now: float) -> bool:
            asked.append(e.label)
            return e.label not in ejected

        p = Picker(lb, endpoints, usable, lambda label: 0.0, None, ejected)
        exchanges = [FakeExchange(fields=[(b"x-user", b"k%d" % i)]) for i in range(400)]

        def picks() -> list[str]:
            labels = []
            for ex in exchanges:
                labels.append(p.pick(ex).label)  # type: ignore[union-attr]
                p.release(ex)
            return labels

        assert len(set(picks())) == 4 and asked == []
        ejected.add("10.0.0.1:80")
        # (A random draw tries as many times as there are endpoints, then panics: rarely the ejected one.)
        assert picks().count("10.0.0.1:80") <= (0 if lb is HEADER else 12) and asked

    def test_an_endpoint_the_backend_ejects_gets_no_keys_and_the_others_keep_theirs(self) -> None:
        """Through a worker's BackendState: its ejections reach the picker's hash."""
        backend = Backend("b", [Endpoint(f"10.0.0.{i}", 80) for i in range(4)])
        state = BackendState(backend, Resilience(load_balancer=HEADER), 1, "test", lambda s, urgent: None)
        exchanges = [FakeExchange(started=100.0, fields=[(b"x-user", b"k%d" % i)]) for i in range(1000)]
        before = [backend.pick(ex).label for ex in exchanges]  # type: ignore[union-attr]
        assert state.picker is not None and set(before) == {e.label for e in backend.endpoints}
        state.eject(backend.endpoints[1], until=200.0)
        after = [backend.pick(ex).label for ex in exchanges]  # type: ignore[union-attr]
        assert "10.0.0.1:80" not in after
        assert all(a == b for a, b in zip(after, before, strict=True) if b != "10.0.0.1:80")

    def test_least_request_counts_a_pick_until_release_and_a_second_pick_moves_the_count(self) -> None:
        p = picker(LoadBalancer("LeastRequest"), 2)
        assert p.least is not None
        ex = FakeExchange()
        first = p.pick(ex)
        assert p.least.in_flight == {first.label: 1}  # type: ignore[union-attr]
        p.pick(ex)  # a retry picks again: one request in flight still
        assert sum(p.least.in_flight.values()) == 1
        p.release(ex)
        assert p.least.in_flight == {} and ex.counted is None

    def test_in_flight_counts_outlive_a_new_picker(self) -> None:
        old = picker(LoadBalancer("LeastRequest"), 2)
        ex = FakeExchange()
        old.pick(ex)
        new = Picker(LoadBalancer("LeastRequest"), old.endpoints, lambda e, now: True, lambda label: 0.0, old)
        new.release(ex)
        assert new.least is not None and new.least.in_flight == {}

    def test_slow_start_gives_a_new_endpoint_a_growing_share(self) -> None:
        endpoints = [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)]
        ready = {"10.0.0.1:80": -1000.0, "10.0.0.2:80": 100.0}  # the second became ready at t=100
        p = Picker(LoadBalancer("RoundRobin", None, 10.0), endpoints, lambda e, now: True, ready.__getitem__)
        share = {}
        for t in (100.0, 105.0, 111.0):
            picks = Counter(p.pick(FakeExchange(started=t)).label for _ in range(1100))  # type: ignore[union-attr]
            share[t] = picks["10.0.0.2:80"] / 1100
        assert share[100.0] == pytest.approx(0.1 / 1.1, abs=0.01)
        assert share[105.0] == pytest.approx(0.5 / 1.5, abs=0.01)
        assert share[111.0] == pytest.approx(0.5, abs=0.01)
        assert p.ramp_until == 0.0  # the window is over: no more ramping
