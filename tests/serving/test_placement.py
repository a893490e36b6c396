"""Placing replicas, without starting any: a node counts only while its agent runs; a model whose
weights fit no node is refused at once with the sizes; replicas beyond the organization's compute
quota are refused naming the quota; nothing is placed, held or billed for a refusal."""

from __future__ import annotations

import pytest

from billing.models import UsageEvent
from catalog.models import BaseModel
from compute import services as compute
from compute.models import Allocation, OrganizationCompute
from serving import autoscale, deployments, replicas
from serving.models import Backend, Endpoint
from tests.conftest import DEMO_MODEL, session_client

pytestmark = pytest.mark.django_db


def publish_dedicated(tenant, replicas: int = 1):
    owner = session_client(tenant.owner)
    return owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "own", "model": DEMO_MODEL, "billing_mode": "dedicated", "replicas": replicas},
        format="json",
    )


def test_without_a_node_agent_nothing_is_placed_and_the_reason_says_so():
    deployment = deployments.for_model(BaseModel.objects.get(pk=DEMO_MODEL))
    compute.this_node()  # a node whose GPU worker runs, but no agent
    assert deployment.desired == 1  # the demo model's policy keeps one replica
    assert autoscale.converge(deployment) == "no node of the pool runs a node agent that could start it"
    assert not Backend.objects.filter(deployment=deployment).exists() and not Allocation.objects.exists()


def test_a_model_whose_weights_fit_no_node_fails_at_once_with_the_sizes(
    make_tenant, django_capture_on_commit_callbacks
):
    compute.register_agent("127.0.0.1")
    BaseModel.objects.filter(pk=DEMO_MODEL).update(parameters=10**12)  # 4.4 TiB in float32
    tenant = make_tenant("too-big")
    with django_capture_on_commit_callbacks(execute=True):
        created = publish_dedicated(tenant)
    assert created.status_code == 201, created.content
    endpoint = Endpoint.all_orgs.get(pk=created.json()["id"])
    assert endpoint.status == "failed"
    assert "needs 4470.8 GiB on an accelerator; the largest of the pool has" in endpoint.status_reason
    assert not Backend.objects.filter(deployment__key=endpoint.pk).exists()
    assert not Allocation.objects.exists() and not UsageEvent.all_orgs.filter(endpoint_id=endpoint.pk).exists()


def test_replicas_beyond_the_compute_quota_are_refused_naming_it(make_tenant):
    compute.register_agent("127.0.0.1")
    tenant = make_tenant("quota")
    OrganizationCompute.objects.create(organization=tenant.org, max_accelerators=1)
    refused = publish_dedicated(tenant, replicas=2)
    assert refused.status_code == 429, refused.content
    error = refused.json()["error"]
    assert error["code"] == "compute_quota_exceeded" and error["param"] == "replicas"
    assert "quota of 1 accelerators at once is in use (0 held" in error["message"]
    assert not Endpoint.all_orgs.filter(organization=tenant.org).exists() and not Allocation.objects.exists()


def test_a_draining_replica_is_taken_back_before_a_new_one_is_placed():
    """A call right after a scale to zero finds the last replica draining, its engine still up and
    its accelerator the one free: the replica serves again rather than the call being refused."""
    compute.register_agent("127.0.0.1")
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)
    deployment = deployments.for_model(BaseModel.objects.get(pk=DEMO_MODEL))
    assert autoscale.cold_start(DEMO_MODEL) == ""
    (backend,) = Backend.objects.filter(deployment=deployment)
    replicas.launched(backend.pk, pid=12345, port=18000)
    replicas.ready(backend.pk)
    deployments.scale(deployment.key, 0, "no request")
    autoscale.converge(deployment)
    assert Backend.objects.get(pk=backend.pk).state == "draining"
    assert autoscale.cold_start(DEMO_MODEL) == ""  # a call comes
    assert list(Backend.objects.filter(deployment=deployment).values_list("pk", "state")) == [(backend.pk, "ready")]
    assert Allocation.objects.get(pk=backend.allocation_id).state == "active"
