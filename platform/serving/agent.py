"""The node agent: runs, on its node, the engine process of every replica the pool placed there.

One per host (`manage.py node_agent`; `make run` starts it). Each pass it heartbeats its node and
compares the replicas placed on it (serving.replicas) with the engines it runs:

- a starting replica whose accelerators are its own gets its engine: on a free port of the node's
  address, bound to its devices (CUDA_VISIBLE_DEVICES, or its share of the cores as threads), with
  its secret; once the engine answers /health its adapters are loaded and it is probed with a real
  generation, and only then is it ready (the gateway routes to it);
- an engine that exits unasked, or does not answer within SERVING_ENGINE_START_SECONDS, is reported
  crashed: it starts again with back-off, and fails after SERVING_MAX_CRASHES;
- a draining replica's engine is stopped once nothing runs on it (or at SERVING_DRAIN_SECONDS):
  SIGTERM, then SIGKILL; its accelerators go back to the pool;
- an engine no replica wants any more is stopped.

Engines die with the agent (the launcher ties them to it), so a killed agent leaves nothing
running; the replicas it ran start again when it comes back, or elsewhere once its node is reaped.
An agent stopped cleanly stops its engines and ends their replicas.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
from django.conf import settings
from django.db import close_old_connections

from catalog.loader import SourceError, resolve_source
from catalog.loader.load import cached_weights
from catalog.models import BaseModel
from compute import allocations
from compute import services as compute
from serving import engine_load, engines, replica_client, replicas
from serving.launcher import Handle, Launcher, LocalLauncher, log_tail
from serving.models import Backend, ReplicaState

log = logging.getLogger("serving.agent")
R = ReplicaState
STOP_GRACE_SECONDS = 10
CACHE_SCAN_SECONDS = 60


class NodeAgent:
    def __init__(self, launcher: Launcher | None = None, address: str | None = None, interval: float = 1.0):
        self.launcher = launcher or LocalLauncher()
        self.address = address or settings.COMPUTE_NODE_ADDRESS
        self.interval = interval
        self.handles: dict[int, Handle] = {}
        self.logs: dict[int, str] = {}
        self.launched_at: dict[int, float] = {}
        self.not_before: dict[int, float] = {}
        self.draining_since: dict[int, float] = {}
        self.launched: dict[int, Handle] = {}  # allocation id -> its process (a job led elsewhere)
        self.exited: set[int] = set()
        self.stopping = threading.Event()
        self.node = compute.register_agent(self.address)
        self._beat_at = 0.0
        self._cache_at = 0.0

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        log.info("node agent of %s (%s) running", self.node.name, self.address)
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except Exception:
                    log.exception("node agent pass failed; the next one retries")
                finally:
                    close_old_connections()
                self.stopping.wait(self.interval)
        finally:
            self.shutdown()

    def step(self) -> None:
        now = time.monotonic()
        self._heartbeat(now)
        rows = {b.pk: b for b in replicas.on_node(self.node.pk)}
        for pk in [pk for pk in self.handles if pk not in rows]:
            self._stop(pk)  # ended, failed or removed elsewhere
        for backend in rows.values():
            self._tend(backend, now)
        self._tend_launches()

    def _tend_launches(self) -> None:
        """The processes this node runs for a job that another node leads: started once, stopped
        when the job's allocation here ends (a run that exits is not started again: the leading
        node's run decides what the job does next)."""
        wanted = {a.pk: a for a in allocations.launches_on(self.node.pk)}
        for pk in [pk for pk in self.launched if pk not in wanted]:
            self.launcher.stop(self.launched.pop(pk), STOP_GRACE_SECONDS)
        for pk, allocation in wanted.items():
            handle = self.launched.get(pk)
            if handle is not None:
                if self.launcher.exit_code(handle) is not None and pk not in self.exited:
                    self.exited.add(pk)
                    log.info("%s's run on this node exited with %s", allocation.holder, self.launcher.exit_code(handle))
                continue
            env = dict(allocation.launch.get("env") or {})
            env.update(engines.device_env(allocation.devices, self.node.accelerator, self.node.accelerator_count))
            if settings.COMPUTE_NODE_INTERFACE:  # this node's, not the leading node's
                env["GLOO_SOCKET_IFNAME"] = settings.COMPUTE_NODE_INTERFACE
            folder = settings.VAR_DIR / "trainers"
            folder.mkdir(parents=True, exist_ok=True)
            log_path = folder / f"{allocation.holder.replace('/', '-')}.log"
            spec = engines.EngineSpec(allocation.holder, list(allocation.launch["argv"]), env, log_path)
            self.launched[pk] = self.launcher.start(spec, 0)
            log.info("%s: started its part on this node (pid %s)", allocation.holder, self.launched[pk].pid)

    def shutdown(self) -> None:
        """A clean stop: every engine stops and its replica ends (the pool takes the accelerators back)."""
        for pk in list(self.handles):
            self._stop(pk)
            replicas.ended(pk, "its node agent stopped")
        for handle in self.launched.values():
            self.launcher.stop(handle, STOP_GRACE_SECONDS)
        compute.agent_stopped(self.node.pk)

    # -- one replica ---------------------------------------------------------------------------
    def _tend(self, backend: Backend, now: float) -> None:
        handle = self.handles.get(backend.pk)
        if handle is not None and self.launcher.exit_code(handle) is not None:
            self._exited(backend, handle, now)
            return
        if backend.state == R.STARTING:
            if handle is None:
                self._launch(backend, now)
            else:
                self._bring_up(backend, handle, now)
        elif backend.state == R.READY and handle is None:
            # It ran under an agent that is gone (its engine died with it): start it again.
            self._crashed(backend, "its node agent restarted", now, count=False)
        elif backend.state == R.DRAINING:
            self._drain(backend, handle, now)
        else:
            self.draining_since.pop(backend.pk, None)  # taken back while draining: its deadline starts over

    def _launch(self, backend: Backend, now: float) -> None:
        if not replicas.may_start(backend) or now < self.not_before.get(backend.pk, 0):
            return
        try:
            port = self.launcher.free_port(self.address)
            spec = engines.spec(
                backend,
                port=port,
                host=self.address,
                devices=list(backend.allocation.devices),
                accelerator=self.node.accelerator,
                count=self.node.accelerator_count,
            )
        except engines.EngineUnavailable as error:
            log.warning("replica %s cannot start: %s (%s)", backend.name, error.reason, error.detail)
            replicas.failed(backend.pk, f"its engine cannot start: {error.reason}")
            return
        handle = self.launcher.start(spec, port)
        self.handles[backend.pk], self.logs[backend.pk] = handle, str(spec.log_path or "")
        self.launched_at[backend.pk] = now
        replicas.launched(backend.pk, pid=handle.pid, port=port)
        log.info("replica %s: %s engine started (pid %s, port %s)", backend.name, backend.engine, handle.pid, port)

    def _bring_up(self, backend: Backend, handle: Handle, now: float) -> None:
        if now - self.launched_at.get(backend.pk, now) > settings.SERVING_ENGINE_START_SECONDS:
            self._stop(backend.pk)
            self._crashed(backend, f"its engine did not answer within {settings.SERVING_ENGINE_START_SECONDS} s", now)
            return
        if not _healthy(backend):
            return
        for adapter in backend.deployment.adapters:
            outcome = replica_client.load_adapter(backend, name=adapter["name"], path=adapter["path"])
            if not outcome.ok:
                log.warning("replica %s: %s", backend.name, outcome.error)
                self._stop(backend.pk)
                replicas.failed(backend.pk, outcome.reason)
                return
        model = backend.deployment.adapters[0]["name"] if backend.deployment.adapters else backend.upstream_model
        outcome = replica_client.probe(backend, model=model)
        if not outcome.ok:
            log.warning("replica %s: probe failed: %s", backend.name, outcome.error)
            return  # tried again next pass, until the start-up bound
        replicas.ready(backend.pk)
        log.info("replica %s ready at %s", backend.name, backend.url)

    def _drain(self, backend: Backend, handle: Handle | None, now: float) -> None:
        if handle is None:
            replicas.ended(backend.pk, backend.state_reason or "stopped")
            return
        since = self.draining_since.setdefault(backend.pk, now)
        load = engine_load.read(backend)
        # Gateways keep a route for a few seconds: wait that long even when nothing runs.
        settled = now - since >= settings.GATEWAY_ROUTE_CACHE_SECONDS and (load is None or load.in_flight == 0)
        if settled or now - since >= settings.SERVING_DRAIN_SECONDS:
            self._stop(backend.pk)
            replicas.ended(backend.pk, backend.state_reason or "stopped")

    def _exited(self, backend: Backend, handle: Handle, now: float) -> None:
        code = self.launcher.exit_code(handle)
        log.warning(
            "replica %s: engine exited with code %s; its log ends:\n%s",
            backend.name,
            code,
            log_tail(self.logs.get(backend.pk, "")),
        )
        self._forget(backend.pk)
        if backend.state == R.DRAINING:
            replicas.ended(backend.pk, backend.state_reason or "stopped")
        else:
            phase = "while starting" if backend.state == R.STARTING else "while serving"
            self._crashed(backend, f"its engine exited with code {code} {phase}", now)

    def _crashed(self, backend: Backend, reason: str, now: float, count: bool = True) -> None:
        state = replicas.crashed(backend.pk, reason) if count else replicas.restart(backend.pk, reason)
        if state == R.STARTING:
            fresh = Backend.objects.get(pk=backend.pk)
            self.not_before[backend.pk] = now + replicas.backoff_seconds(fresh)

    def _stop(self, pk: int) -> None:
        handle = self.handles.get(pk)
        if handle is not None:
            self.launcher.stop(handle, STOP_GRACE_SECONDS)
        self._forget(pk)

    def _forget(self, pk: int) -> None:
        for table in (self.handles, self.logs, self.launched_at, self.draining_since):
            table.pop(pk, None)

    # -- the node --------------------------------------------------------------------------------
    def _heartbeat(self, now: float) -> None:
        if now - self._beat_at < max(1.0, settings.WORKER_HEARTBEAT_SECONDS / 3):
            return
        self._beat_at = now
        cached = None
        if now - self._cache_at >= CACHE_SCAN_SECONDS:
            self._cache_at, cached = now, cached_models()
        if not compute.agent_heartbeat(self.node.pk, cached):
            self.node = compute.register_agent(self.address)


def _healthy(backend: Backend) -> bool:
    try:
        headers = {"Authorization": f"Bearer {backend.api_key}"}
        return httpx.get(f"{backend.url}/health", headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cached_models() -> list[str]:
    """Base models whose weights this node holds ready to load (placement prefers such a node)."""
    found = []
    for model_id, source in BaseModel.objects.exclude(status=BaseModel.Status.DISABLED).values_list("pk", "source"):
        try:
            weights = cached_weights(resolve_source(source), settings.MODEL_CACHE_DIR)
        except SourceError:  # its file is not on this node
            weights = None
        if weights is not None:
            found.append(model_id)
    return found
