"""Header-type sessions against a real Valkey: the first proposal for an id wins for the fleet,
re-pinning moves a session off a gone endpoint, and without Redis every replica hashes alike; on a
3-master Cluster a route's ids spread over the slots and the first proposal still wins."""

from __future__ import annotations

import asyncio

from redis.cluster import key_slot

from gw.policies.session_table import SessionTable, rendezvous
from gw.state import Keys, RedisGuard, SharedState, connect
from tests.support import valkey

ENDPOINTS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


def table(server: valkey.Server | None, keys: Keys, idle: bool = False) -> SessionTable:
    shared = SharedState(connect(server.url), RedisGuard(1.0), keys) if server is not None else None
    return SessionTable(asyncio.get_running_loop(), shared, "route-0", 60.0, idle)


async def settle(t: SessionTable, sid: bytes, proposed: str, gone: str = "") -> tuple[str, bool]:
    answer: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
    t.settle(sid, proposed, ENDPOINTS, lambda endpoint, fleet: answer.set_result((endpoint, fleet)), gone)
    return await answer


async def test_the_first_proposal_for_an_id_wins_for_every_worker(server: valkey.Server, keys: Keys) -> None:
    a, b = table(server, keys), table(server, keys)
    first = await settle(a, b"user-1", ENDPOINTS[0])
    second = await settle(b, b"user-1", ENDPOINTS[2])  # another replica's balancer picked another
    assert first == second == (ENDPOINTS[0], True)
    assert b.cached(b"user-1", 0.0) == ENDPOINTS[0] and a.created == 1 and b.created == 0


async def test_two_workers_seeing_a_new_id_at_once_agree(server: valkey.Server, keys: Keys) -> None:
    workers = [table(server, keys) for _ in range(4)]
    answers = await asyncio.gather(*(settle(w, b"new", ENDPOINTS[i % 3]) for i, w in enumerate(workers)))
    assert len({endpoint for endpoint, _ in answers}) == 1


async def test_a_session_on_a_gone_endpoint_is_re_pinned_once(server: valkey.Server, keys: Keys) -> None:
    a, b = table(server, keys), table(server, keys)
    assert (await settle(a, b"s", ENDPOINTS[1]))[0] == ENDPOINTS[1]
    moved = await settle(a, b"s", ENDPOINTS[2], gone=ENDPOINTS[1])
    # The other worker, finding the same endpoint gone, follows the move instead of making its own.
    assert moved[0] == ENDPOINTS[2] and (await settle(b, b"s", ENDPOINTS[0], gone=ENDPOINTS[1]))[0] == ENDPOINTS[2]
    assert a.repinned == 1


async def test_without_redis_every_replica_hashes_an_id_to_the_same_endpoint(
    keys: Keys, own_server: valkey.Server
) -> None:
    a = table(own_server, keys)
    own_server.stop()
    b = table(None, keys)
    ids = [b"id-%d" % i for i in range(50)]
    got_a = [await settle(a, i, ENDPOINTS[0]) for i in ids]
    got_b = [await settle(b, i, ENDPOINTS[0]) for i in ids]
    assert got_a == got_b and all(not fleet for _, fleet in got_a)
    assert len({e for e, _ in got_a}) == 3  # spread over the endpoints


async def test_an_answer_after_the_budget_is_remembered_and_the_request_went_on_by_the_hash(
    server: valkey.Server, keys: Keys
) -> None:
    """A loaded worker: Redis answers after the request budget. The request is not held (the hash
    decides it), but the fleet's answer is cached and stored: an id a response issued, which no
    request waits for, is settled to the endpoint that issued it."""
    shared = SharedState(connect(server.url), RedisGuard(1e-6, failures_to_open=10**6), keys)
    late = SessionTable(asyncio.get_running_loop(), shared, "route-0", 60.0, False)
    remembered = asyncio.Event()
    remember = late._remember
    late._remember = lambda sid, endpoint: (remember(sid, endpoint), remembered.set())  # type: ignore[method-assign]
    answers: list[tuple[str, bool]] = []
    hashed = rendezvous(b"issued", sorted(ENDPOINTS))
    proposed = next(e for e in ENDPOINTS if e != hashed)
    late.settle(b"issued", proposed, ENDPOINTS, lambda endpoint, fleet: answers.append((endpoint, fleet)))
    await asyncio.wait_for(remembered.wait(), 5.0)
    assert answers == [(hashed, False)]  # once, by the hash, at the budget
    assert late.cached(b"issued", 0.0) == proposed
    assert (await settle(table(server, keys), b"issued", hashed)) == (proposed, True)


def test_rendezvous_moves_only_the_sessions_of_a_removed_endpoint() -> None:
    ids = [b"id-%d" % i for i in range(3000)]
    before = {i: rendezvous(i, ENDPOINTS) for i in ids}
    after = {i: rendezvous(i, ENDPOINTS[:2]) for i in ids}
    moved = [i for i in ids if before[i] != after[i]]
    assert all(before[i] == ENDPOINTS[2] for i in moved)
    assert abs(len(moved) / len(ids) - 1 / 3) < 0.05


CLUSTER_IDS = [b"user-%d" % i for i in range(12)]


def cluster_table(cluster: valkey.Cluster, keys: Keys) -> SessionTable:
    """One worker's table with a cluster client of its own (as each worker connects)."""
    shared = SharedState(connect(cluster.url), RedisGuard(2.0), keys)
    return SessionTable(asyncio.get_running_loop(), shared, "route-0", 60.0, False)


def slot(t: SessionTable, sid: bytes) -> int:
    return key_slot(f"{t.stem}:{sid.decode()}".encode())


async def test_ids_spread_over_the_masters_and_the_first_proposal_wins(cluster: valkey.Cluster, keys: Keys) -> None:
    a, b = cluster_table(cluster, keys), cluster_table(cluster, keys)
    client = a.shared.redis  # type: ignore[union-attr]
    try:
        slots = {slot(a, sid) for sid in CLUSTER_IDS}
        assert len(slots) == len(CLUSTER_IDS)  # no shared hash tag: each id's key in a slot of its own
        await client.initialize()
        masters = {client.get_node_from_key(f"{a.stem}:{sid.decode()}").port for sid in CLUSTER_IDS}
        assert len(masters) == 3
        # Worker a proposes first for every id; b's different proposals lose, on whichever master.
        first = [await settle(a, sid, ENDPOINTS[i % 3]) for i, sid in enumerate(CLUSTER_IDS)]
        second = [await settle(b, sid, ENDPOINTS[(i + 1) % 3]) for i, sid in enumerate(CLUSTER_IDS)]
        assert first == second == [(ENDPOINTS[i % 3], True) for i in range(len(CLUSTER_IDS))]
        assert a.created == len(CLUSTER_IDS) and b.created == 0
    finally:
        await client.aclose()
        await b.shared.redis.aclose()  # type: ignore[union-attr]


async def test_two_workers_seeing_new_ids_at_once_agree_on_a_cluster(cluster: valkey.Cluster, keys: Keys) -> None:
    workers = [cluster_table(cluster, keys) for _ in range(3)]  # each proposing an endpoint of its own
    try:
        for sid in CLUSTER_IDS[:6]:
            # All three propose in the same loop turn: one batch per worker, on the id's master.
            answers = await asyncio.gather(*(settle(w, sid, ENDPOINTS[i % 3]) for i, w in enumerate(workers)))
            assert len({endpoint for endpoint, _ in answers}) == 1, (sid, answers)
            assert all(fleet for _, fleet in answers)  # decided by Redis, not the hash fallback
        assert sum(w.created for w in workers) == 6
    finally:
        for w in workers:
            await w.shared.redis.aclose()  # type: ignore[union-attr]
