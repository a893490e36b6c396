"""Replica selection: a replica that refuses connections is skipped before the first byte; with
none answering the caller gets a clear 503; the health probe records who answers."""

import socket

import httpx
import pytest

from serving import services
from serving.models import Backend
from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_failover_to_a_live_replica_and_503_when_none_answers(live_web, runtime_server, make_tenant):
    tenant = make_tenant("failover")
    headers = {"Authorization": f"Bearer {tenant.key()}"}
    dead = services.register_backend(name="dead-replica", url=dead_url(), base_model=DEMO_MODEL)
    Backend.objects.filter(pk=dead.pk).update(healthy=True)  # as if the probe had not noticed yet
    live = runtime_server.register(name="live-replica")
    Backend.objects.filter(pk=live.pk).update(healthy=True)
    for _ in range(6):  # whichever replica is tried first, every call is served
        response = httpx.post(live_web.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
    Backend.objects.filter(pk=live.pk).update(enabled=False)
    refused = httpx.post(live_web.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=60)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_unavailable"


def test_probe_marks_replicas(runtime_server):
    live = runtime_server.register(name="probed-live")
    dead = services.register_backend(name="probed-dead", url=dead_url(), base_model=DEMO_MODEL)
    from serving.tasks import probe_backends

    probe_backends.apply()
    live.refresh_from_db()
    dead.refresh_from_db()
    assert live.healthy and live.last_error == "" and live.last_checked_at is not None
    assert not dead.healthy and "ConnectError" in dead.last_error


def test_runtime_adapter_admin_needs_the_secret_and_stays_in_the_store(runtime_server):
    url = runtime_server.url + "/v1/load_lora_adapter"
    body = {"lora_name": "x", "lora_path": "/etc"}
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {runtime_server.api_key}"}
    outside = httpx.post(url, json=body, headers=auth, timeout=30)
    assert outside.status_code == 403 and "outside the artifact store" in outside.json()["error"]["message"]
    missing = httpx.post(url, json={"lora_name": "x", "lora_path": "nope"}, headers=auth, timeout=30)
    assert missing.status_code == 400
    assert httpx.get(runtime_server.url + "/v1/models", timeout=30).status_code == 401
    models = httpx.get(runtime_server.url + "/v1/models", headers=auth, timeout=30).json()["data"]
    assert models[0]["id"] == DEMO_MODEL  # the base model first; anything else is an adapter on it
    assert all(m["parent"] == DEMO_MODEL for m in models[1:])
