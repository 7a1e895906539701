"""Retry bookkeeping: when an exchange may be tried again, and what a new attempt resends.

Two kinds of retry share it: a keep-alive connection the upstream closed just as it was reused
(the request never reached it: one retry, idempotent requests only), and a rule's GEP-1731
`retry` (statuses, lost connections, timeouts; `attempts`, `backoff`). A body can be resent
only if it was kept: up to REPLAY_LIMIT bytes, while it arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gw.errors import ProxyError, UpstreamRefused

if TYPE_CHECKING:
    from gw.proxy.exchange import Exchange

REPLAY_LIMIT = 64 * 1024  # idempotent request bodies up to this size can be retried


def keeps_replay(req: Exchange) -> bool:
    """Whether `req`'s body should be kept while it arrives, for a retry."""
    rule = req.rule
    return (req.idempotent or (rule is not None and rule.retry is not None)) and (
        req.chunked or 0 < req.content_length <= REPLAY_LIMIT
    )


def replayable(req: Exchange) -> bool:
    """A bodiless request, or one whose whole body was kept."""
    return not req.has_body or (req.replay is not None and req.complete)


def retries_status(req: Exchange, status: int) -> bool:
    """The rule retries responses of this status, and the request can be sent again."""
    rule = req.rule
    return (
        rule is not None
        and rule.retry is not None
        and rule.retry.should_retry(status, req.retries)
        and req.complete
        and replayable(req)
    )


def may_retry(req: Exchange, error: ProxyError) -> bool:
    """A failed attempt (refused, reset, timed out) is retried when the rule's retry allows it.

    A refused connection is retried whatever `codes` says (GEP-1731: implementations SHOULD, and
    the upstream saw nothing); a lost connection or a response timeout only when its status
    (502, 504) is one of the codes, since the upstream may have acted on the request.
    """
    rule = req.rule
    if rule is None or rule.retry is None or not req.complete or not replayable(req):
        return False
    retry = rule.retry
    return req.retries < retry.attempts and (isinstance(error, UpstreamRefused) or error.status in retry.codes)


def rearm(req: Exchange) -> None:
    """Make the kept body the body of the next attempt."""
    req.pending_body = list(req.replay or ())
    req.body_buffered = sum(map(len, req.pending_body))
    req.body_sent = 0
    req.attempts += 1
