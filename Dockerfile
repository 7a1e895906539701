# syntax=docker/dockerfile:1
# gw's image: `gw run` (the gateway) by default, `gw controller` with the argument `controller`.
#
#   docker build -t gw:dev .
#
# Two stages: the builder has a compiler for any dependency without a wheel for the platform
# (uvloop, httptools, hiredis, ... on a less common architecture) and turns gw and all of its
# dependencies into wheels; the final image installs only those wheels and has no compiler.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What the wheel is built from (pyproject.toml's packages, package data, readme and licence).
COPY pyproject.toml README.md LICENSE ./
COPY gw ./gw
COPY supervisor ./supervisor
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# tini is PID 1, not gw's supervisor. The supervisor installs its signal handlers only once its
# workers are up (gw/supervisor/arbiter.py, start), and the kernel drops a signal sent to PID 1
# that has no handler: a TERM while a pod starts would be ignored until the kubelet's SIGKILL.
# And it reaps only the children it spawned (asyncio's child watcher waits on their pids):
# processes orphaned into the container (a `kubectl exec` session's, a dead worker's) would
# stay zombies. tini reaps every child and forwards each signal to gw, which relays TERM, HUP,
# USR2 to its workers itself (no `-g`: a group-wide signal would reach workers behind its back).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A numeric UID, so that the pod's runAsNonRoot can check it without a passwd lookup; the passwd
# entry is still there because gw names the author of a config version by user name.
RUN groupadd --system --gid 10001 gw \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/gw --create-home --shell /usr/sbin/nologin gw
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels gw
USER 10001:10001
WORKDIR /home/gw
# USER: getpass.getuser() reads it first, so a cluster that runs the image under another UID
# (OpenShift's random ones) has a name too. The admin endpoints listen on every address: the
# kubelet probes /readyz and /healthz on the pod's IP (the NetworkPolicy limits who else may).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    USER=gw \
    GW_ADMIN_ADDR=0.0.0.0:9901
EXPOSE 9901
ENTRYPOINT ["/usr/bin/tini", "--", "gw"]
CMD ["run"]
