"""Walk every registered route as another organization's member and as its API key.

Routes join automatically: the walker reads Django's URL resolver. A route whose view declares a
tenant-owned `model` is called with a real object id of organization A; if A has no such object,
the test fails and asks for one to be seeded below. Every response must be 404 (for A's URLs)
or mention nothing of A, and the database must not change.
"""

from __future__ import annotations

import re
import uuid

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver

from tenancy import scope, services
from tenancy.audit import Actor
from tenancy.managers import TenantModel
from tests.conftest import key_client, session_client

SKIP_PREFIXES = ("admin/", "static/", "media/", "api/docs", "api/schema", "healthz", "sign-", "static")
METHODS = ("get", "post", "put", "patch", "delete")


def iter_routes(patterns=None, prefix=""):
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        regex = prefix + entry.pattern.regex.pattern.lstrip("^")
        if isinstance(entry, URLResolver):
            yield from iter_routes(entry.url_patterns, regex.rstrip("$").removesuffix(r"\Z"))
        elif isinstance(entry, URLPattern):
            yield regex, entry.callback


def concrete(regex: str, values: dict[str, str]) -> str:
    out = regex
    for name in re.findall(r"\(\?P<(\w+)>", regex):
        # Replace the whole named group, whatever pattern it holds (balanced one level deep).
        out = re.sub(rf"\(\?P<{name}>(?:[^()]|\([^()]*\))*\)", values[name], out, count=1)
    out = out.replace(r"\Z", "").replace("$", "").replace("/?", "/").replace("\\", "")
    return "/" + out


def view_model(callback):
    owner = getattr(callback, "cls", None) or getattr(callback, "view_class", None) or callback
    model = getattr(owner, "model", None)
    return model if isinstance(model, type) and issubclass(model, TenantModel) else None


def named_model(name: str):
    """`dataset_id` -> the tenant-owned model called Dataset, if there is one."""
    wanted = name.removesuffix("_id").replace("_", "")
    return next((m for m in apps.get_models() if issubclass(m, TenantModel) and m.__name__.lower() == wanted), None)


def is_object_id(name: str) -> bool:
    return name in {"pk", "id"} or name.endswith("_id")


def snapshot():
    """Every row of the project's own tables, minus fields that legitimately move on a read."""
    ignore = {"last_used_at", "last_login"}
    rows = {}
    for model in apps.get_models():
        if model._meta.app_label in {"sessions", "contenttypes", "auth", "admin"}:
            continue
        manager = model.all_orgs if hasattr(model, "all_orgs") else model._base_manager
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in ignore]
        rows[model._meta.label] = sorted(map(repr, manager.values_list(*fields)))
    return rows


@pytest.fixture
def seeded(tenant_a, tenant_b):
    """Organization A owns one object of every tenant-owned model; B is the intruder."""
    tenant_a.add_member("member@alpha.test")
    tenant_a.key()
    services.invite(
        organization_id=tenant_a.org.pk,
        email="invitee@alpha.test",
        role="member",
        actor_role="owner",
        actor=Actor(user=tenant_a.owner),
    )
    from fine_tuning import services as fine_tuning
    from tests.fine_tuning.test_files_api import training_file

    uploaded = training_file()
    uploaded.sha256 = "0" * 64
    file = fine_tuning.upload_file(
        organization_id=tenant_a.org.pk, uploaded=uploaded, purpose="fine-tune", actor=Actor(user=tenant_a.owner)
    )
    with scope.organization(tenant_a.org.pk):  # as the validation task runs it
        fine_tuning.validate_file(file.pk)
    dataset = fine_tuning.create_dataset(organization_id=tenant_a.org.pk, name="a-data", actor=Actor())
    fine_tuning.add_dataset_version(dataset.pk, organization_id=tenant_a.org.pk, file_id=file.pk, actor=Actor())
    from billing import budgets
    from billing.models import Notification

    budgets.ensure_account(tenant_a.org.pk)
    Notification.all_orgs.create(organization=tenant_a.org, kind="spend_limit", title="50 %", body="a's notice")
    from billing import invoicing, paying
    from billing.models import Price, UsageEvent
    from tests.billing.test_invoices import LAST_MONTH, _at

    price = Price.objects.create(model="a-secret-model", input_per_token=7, output_per_token=9, training_per_token=0)
    UsageEvent.all_orgs.create(
        organization=tenant_a.org, request_id="a-usage", route="chat.completions", model="a-secret-model",
        base_model="a-secret-model", prompt_tokens=5, completion_tokens=5, cost=80, price=price, status_code=200,
        outcome="ok", latency_ms=1, created_at=_at(LAST_MONTH, 3),
    )  # fmt: skip
    paying.save_card(tenant_a.org.pk, "pm_card_visa", actor=Actor(user=tenant_a.owner))
    paying.top_up(tenant_a.org.pk, "5", actor=Actor(user=tenant_a.owner))
    invoicing.close_due()
    from serving.models import Endpoint

    Endpoint.all_orgs.create(
        id="ep-a0a0a0a0a0a0a0a0", organization=tenant_a.org, name="a-endpoint", model="smollm2-135m-instruct",
        base_model_id="smollm2-135m-instruct", status="ready",
    )  # fmt: skip
    from batches import lifecycle

    new = lifecycle.NewBatch(
        id="batch_a0a0a0a0a0a0a0a0a0a0a0a0", organization_id=tenant_a.org.pk, input_file_id=file.pk,
        endpoint="/v1/chat/completions", completion_window="24h", metadata={"a": "secret"}, api_key_id=None,
        user_id=tenant_a.owner.pk,
    )  # fmt: skip
    lifecycle.create_failed(new, errors=[{"code": "x", "message": "a's error", "param": None, "line": 1}])
    from fine_tuning import jobs

    with scope.organization(tenant_a.org.pk):
        jobs.create(
            organization_id=tenant_a.org.pk,
            model="smollm2-135m-instruct",
            training_file=file.pk,
            actor=Actor(user=tenant_a.owner),
        )
    return tenant_a, tenant_b


def a_object_id(model, org) -> str:
    obj = model.all_orgs.filter(organization=org).first()
    assert obj is not None, f"Seed an object of {model.__name__} for organization A in the `seeded` fixture"
    return str(obj.pk)


def a_fingerprints(tenant) -> list[str]:
    marks = [tenant.org.slug, tenant.owner.email, "a-secret-model"]
    for model in apps.get_models():
        if issubclass(model, TenantModel):
            marks += [
                str(pk)
                for pk in model.all_orgs.filter(organization=tenant.org).values_list("pk", flat=True)
                if not isinstance(pk, int)
            ]
    return marks


@pytest.mark.django_db
def test_every_route_hides_organization_a_from_organization_b(seeded):
    a, b = seeded
    intruders = {"session": session_client(b.owner), "key": key_client(b.key())}
    marks = a_fingerprints(a)
    before = snapshot()
    walked = 0
    for regex, callback in iter_routes():
        if regex.replace("\\", "").lstrip("/").startswith(SKIP_PREFIXES):
            continue
        model = view_model(callback)
        names = re.findall(r"\(\?P<(\w+)>", regex)
        variants = []
        for own_org in [False, True] if "org" in names else [False]:
            values = {}
            for name in names:
                if name == "org":
                    values[name] = b.org.slug if own_org else a.org.slug
                elif is_object_id(name) and (named_model(name) or model) is not None:
                    values[name] = a_object_id(named_model(name) or model, a.org)
                else:
                    values[name] = str(uuid.uuid4())
            if own_org and not any(is_object_id(n) and (named_model(n) or model) for n in names):
                continue  # B's own list pages are B's business; checked for leaks below anyway
            variants.append((concrete(regex, values), "org" in names, own_org))
        for url, org_in_url, own_org in variants:
            api = url.startswith(("/api/", "/v1/"))
            for who, client in intruders.items():
                for method in METHODS:
                    response = getattr(client, method)(url, data={}, format="json")
                    walked += 1
                    body = response.content.decode(errors="replace")
                    leaked = [m for m in marks if m in body and m not in url]  # echoing the caller's input is no leak
                    assert not leaked, f"{who} {method.upper()} {url} leaked {leaked}"
                    if not org_in_url:
                        continue
                    if not api and who == "key":  # a key means nothing to the console: sign in first
                        assert response.status_code == 302 and "/sign-in/" in response["Location"], url
                    elif own_org:  # B's own organization, A's object id: not found, or a method B may not use
                        assert response.status_code in (404, 405), (
                            f"{who} {method.upper()} {url} -> {response.status_code}"
                        )
                    else:
                        assert response.status_code == 404, f"{who} {method.upper()} {url} -> {response.status_code}"
    assert walked > 100
    assert snapshot() == before, "walking another organization's routes changed the database"
