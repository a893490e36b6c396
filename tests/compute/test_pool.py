"""The pool's other rules and views: tidal lending, a lost node's allocations, utilisation by node,
accelerator and organization, the Prometheus endpoint, the back office's pool page and the
console's compute page (each organization sees only its own)."""

from datetime import timedelta

from django.conf import settings as django_settings
from django.utils import timezone

from compute import allocations, selectors
from compute import services as compute
from compute.models import Allocation, Node
from fine_tuning import jobs
from fine_tuning.models import FineTuningJob, JobEvent
from tests.compute.test_scheduling import GIB, end_run, one_cpu_node, queue_jobs
from tests.conftest import session_client


def replica(node, organization_id: int, name: str = "ep-1@runtime") -> Allocation:
    room = allocations.hold_for_replica(
        node.pk, holder=name, organization_id=organization_id, accelerators=1, memory_bytes=0, notify=""
    )
    return room.allocation


def test_an_idle_endpoint_lends_its_accelerator_and_takes_it_back(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    node = one_cpu_node()
    served = replica(node, tenant_b.org.pk)
    assert served.state == "active" and served.devices == [0]
    job_id = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node) is None  # the endpoint holds the only accelerator
    long_idle = timezone.now() - timedelta(seconds=django_settings.COMPUTE_LEND_IDLE_SECONDS + 1)
    assert allocations.set_idle(served.holder, long_idle) == []
    taken = jobs.claim_next("w", node)
    assert taken.pk == job_id and Allocation.objects.get(holder=job_id, state="active").lent
    assert JobEvent.all_orgs.filter(job_id=job_id, message__startswith="Running on accelerators an idle").exists()
    assert allocations.preempt_reason(job_id) is None
    assert allocations.set_idle(served.holder, None) == [job_id]  # called again: it wants the accelerator back
    assert allocations.preempt_reason(job_id) == f"endpoint replica {served.holder} is being called again"


def test_a_replica_preempts_the_most_recent_training_and_waits_for_it(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    node = one_cpu_node(count=2)
    older, newer = queue_jobs(tenant_a, 2, django_capture_on_commit_callbacks)
    assert jobs.claim_next("w", node).pk == older
    assert jobs.claim_next("w", node).pk == newer
    pending = replica(node, tenant_b.org.pk)
    assert pending.state == "pending" and allocations.preempt_reason(older) is None
    assert allocations.preempt_reason(newer) == f"endpoint replica {pending.holder} needs its accelerators"
    assert pending.devices == Allocation.objects.get(holder=newer, state="active").devices
    with django_capture_on_commit_callbacks(execute=False):
        jobs.finish(newer, worker="w", outcome=jobs.Outcome(code=143, stop="preempt"))
    job = FineTuningJob.all_orgs.get(pk=newer)
    assert (job.status, job.preemptions) == ("queued", 1)
    assert Allocation.objects.get(pk=pending.pk).state == "active"
    assert jobs.claim_next("w", node) is None  # the job waits: training holds one, the replica the other


def test_a_node_that_stops_heartbeating_loses_its_allocations(tenant_a, django_capture_on_commit_callbacks):
    node = one_cpu_node()
    job_id = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == job_id
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=False):
        assert allocations.reap_nodes() == [job_id]
    ended = Allocation.objects.get(holder=job_id)
    assert ended.state == "ended" and ended.end_reason == "the node stopped heartbeating"


def test_utilisation_by_node_accelerator_and_organization(tenant_a, tenant_b):
    node = one_cpu_node(count=2)
    now = timezone.now()
    start = now - timedelta(hours=2)
    Node.objects.filter(pk=node.pk).update(registered_at=start)
    Allocation.objects.create(
        node=node,
        organization=tenant_a.org,
        kind="training",
        holder="ftjob-done",
        devices=[0],
        state="ended",
        started_at=start,
        ended_at=start + timedelta(hours=1),
    )
    Allocation.objects.create(
        node=node,
        organization=tenant_b.org,
        kind="serving",
        holder="ep-b@r",
        devices=[1],
        state="active",
        started_at=start + timedelta(minutes=30),
    )
    figures = selectors.utilisation(start, now)
    (row,) = figures["nodes"]
    assert row["available"] == 2 * 7200 and row["training"] == 3600 and row["serving"] == 5400
    assert row["idle"] == 2 * 7200 - 9000 and row["utilisation"] == 9000 / 14400
    assert [a["busy"] for a in figures["accelerators"]] == [3600, 5400]
    assert figures["organizations"] == {
        tenant_a.org.pk: {"training": 3600.0, "serving": 0.0},
        tenant_b.org.pk: {"training": 0.0, "serving": 5400.0},
    }
    mine = selectors.utilisation(start, now, organization_id=tenant_a.org.pk)
    assert mine["organizations"] == {tenant_a.org.pk: {"training": 3600.0, "serving": 0.0}} and "nodes" not in mine

    # The Prometheus counter: all history, two accelerators held for 10 s counting twice.
    other = compute.register_node(name="other", hostname="h2", accelerator="cpu", count=2, memory=GIB)
    Allocation.objects.create(
        node=other,
        kind="training",
        holder="ftjob-wide",
        devices=[0, 1],
        state="ended",
        started_at=start - timedelta(days=30),
        ended_at=start - timedelta(days=30) + timedelta(seconds=10),
    )
    assert selectors.accelerator_seconds_total(now) == {
        (node.name, "training"): 3600.0,
        (node.name, "serving"): 5400.0,
        ("other", "training"): 20.0,
    }


def test_prometheus_sees_the_pool_and_a_token_guards_it(tenant_a, client, settings, django_capture_on_commit_callbacks):
    node = one_cpu_node(count=2)
    job_id = queue_jobs(tenant_a, 2, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == job_id
    text = client.get("/metrics/pool").content.decode()  # the test client is a loopback client
    assert f'maas_pool_accelerators{{accelerator="cpu",node="{node.name}",state="training"}} 1.0' in text
    assert f'maas_pool_accelerators{{accelerator="cpu",node="{node.name}",state="free"}} 1.0' in text
    assert f'maas_pool_organization_accelerators{{kind="training",organization="{tenant_a.org.slug}"}} 1.0' in text
    assert "maas_fine_tuning_jobs_queued 1.0" in text and f'maas_pool_node_up{{node="{node.name}"}} 1.0' in text
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics/pool").status_code == 403
    assert client.get("/metrics/pool", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    end_run(job_id)


def test_the_back_office_pool_page_and_the_console_compute_page(
    tenant_a, tenant_b, client, django_user_model, django_capture_on_commit_callbacks
):
    node = one_cpu_node()
    first, waiting = queue_jobs(tenant_a, 2, django_capture_on_commit_callbacks)
    theirs = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == first
    jobs.claim_next("w", node)  # nothing fits: the queue keeps its reasons
    client.force_login(django_user_model.objects.create_superuser("root@example.com", "a-long-admin-password"))
    page = client.get(f"/{django_settings.ADMIN_URL}pool/").content.decode()
    assert node.name in page and f"training {first} (alpha)" in page
    assert page.index(theirs) < page.index(waiting)  # claim order: beta's first job before alpha's second
    assert "Waiting for 1 accelerator" in page

    console = session_client(tenant_a.owner).get(f"/orgs/{tenant_a.org.slug}/compute/").content.decode()
    assert first in console and waiting in console and "Waiting for 1 accelerator" in console
    assert theirs not in console and tenant_b.org.slug not in console
    other = session_client(tenant_b.owner).get(f"/orgs/{tenant_a.org.slug}/compute/")
    assert other.status_code == 404


def test_the_back_office_job_list_orders_the_queue_in_a_constant_number_of_queries(
    tenant_a, tenant_b, client, django_user_model, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    import re

    one_cpu_node()
    mine = queue_jobs(tenant_a, 3, django_capture_on_commit_callbacks)
    theirs = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks)[0]
    client.force_login(django_user_model.objects.create_superuser("root@example.com", "a-long-admin-password"))
    url = f"/{django_settings.ADMIN_URL}fine_tuning/finetuningjob/"
    with django_assert_max_num_queries(40) as first:
        client.get(url)
    four_rows = len(first.captured_queries)
    more = queue_jobs(tenant_a, 6, django_capture_on_commit_callbacks)
    with django_assert_max_num_queries(four_rows):  # ten rows cost what four did
        page = client.get(url).content.decode()

    def position(job_id: str) -> str:
        row = page[page.index(job_id) :]
        return re.search(r'<td class="field-queue_position">(\d+)</td>', row[: row.index("</tr>")]).group(1)

    # The claim order: alpha's first, beta's only job second (fair share), then alpha's backlog.
    assert [position(j) for j in [mine[0], theirs, mine[1], mine[2], *more]] == [str(n) for n in range(1, 11)]


def test_serving_counts_against_the_organizations_quota(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    """An organization holding its quota with training cannot take more with endpoint replicas
    (publishing one does not preempt anyone's training past its quota); another organization can."""
    from compute.models import OrganizationCompute

    node = one_cpu_node(count=3)
    OrganizationCompute.objects.create(organization_id=tenant_a.org.pk, max_accelerators=1)
    job_id = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == job_id
    room = allocations.hold_for_replica(
        node.pk, holder="ep-a@runtime", organization_id=tenant_a.org.pk, accelerators=1, memory_bytes=0, notify=""
    )
    assert room.allocation is None and room.preempting == []
    assert "quota of 1 accelerators" in room.refused
    assert allocations.preempt_reason(job_id) is None
    assert replica(node, tenant_b.org.pk, "ep-b@runtime").state == "active"
    OrganizationCompute.objects.filter(organization_id=tenant_a.org.pk).update(max_accelerators=2)
    assert replica(node, tenant_a.org.pk, "ep-a@runtime").state == "active"
