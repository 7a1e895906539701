"""`gw controller`: watch the cluster's Gateway API objects, publish them as config versions, write their status.

Beside the supervisor, above gw.config and gw.state, never importing the data plane: replicas
follow the versions in Redis and never talk to the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from gw.settings import Settings


async def serve(settings: Settings, redis_url: str) -> int:
    """Run the controller and its admin endpoints until TERM/INT; the exit code."""
    from gw.admin import AdminApp, access, access_note, admin_server
    from gw.controller.api import Api, ApiError, connect_http, in_cluster_namespace
    from gw.controller.controller import Controller
    from gw.state.config_store import ConfigStore
    from gw.state.connect import connect

    log = logging.getLogger("gw.controller")
    try:
        api = Api(connect_http())
    except (ApiError, OSError, ValueError) as exc:
        print(f"gw controller: cannot reach the cluster: {exc}", file=sys.stderr)
        return 2
    redis = connect(redis_url)
    namespace = settings.leader_election_namespace or in_cluster_namespace() or "default"
    controller = Controller(settings, api, ConfigStore.from_settings(redis, settings), lease_namespace=namespace)
    host, port = settings.admin_addr
    app = AdminApp(controller.ready, controller.metrics, controller.status, **access(host, settings.admin_token))
    admin = admin_server(app, host, port)
    if note := access_note(host, settings.admin_token):
        log.warning(note)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("controller %s for %s; admin on %s:%d", controller.holder, settings.controller_name, host, port)
    tasks = [loop.create_task(controller.run()), loop.create_task(admin.serve())]
    stopped = loop.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return 0
    finally:
        await controller.stop()
        admin.should_exit = True
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await api.aclose()
        await redis.aclose()
