"""The console as a new customer meets it, in Chromium: sign up, create a key (a reload makes no
second one), see the models with prices, publish an endpoint and watch it become ready without
reloading, stop it; unknown pages are styled. Every page is screenshotted; console errors and
requests off the machine fail the test."""

from __future__ import annotations

import re
import time

import pytest

from serving.models import Endpoint, EndpointReplica
from tenancy.models import APIKey
from tests.conftest import DEMO_MODEL, PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_sign_up_key_models_and_an_endpoint(watched, runtime_server, celery_worker):
    runtime_server.register()
    page = watched.page
    page.goto("/sign-up/")
    watched.shot("sign up")
    page.get_by_label("Email").fill("ada@journey.test")
    page.get_by_label("Your name").fill("Ada")
    page.get_by_label("Organization name").fill("Journey Labs")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account and organization").click()
    page.wait_for_url("**/orgs/journey-labs/")
    watched.shot("dashboard")

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-value").inner_text()
    assert re.fullmatch(r"sk-\S+", secret)
    watched.shot("key created")
    page.reload()  # POST, redirect, GET: the reload shows the list, creates nothing, shows no secret
    assert page.locator("#new-key-value").count() == 0
    assert APIKey.all_orgs.filter(name="laptop").count() == 1

    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model or endpoint").select_option(DEMO_MODEL)
    page.get_by_label("Your message").fill("Say hello.")
    page.get_by_role("button", name="Send").click()
    page.get_by_test_id("reply-usage").wait_for()  # streamed, then metered: tokens and cost from the ledger
    assert page.get_by_test_id("reply").inner_text().strip()
    assert re.search(
        r"\d+ prompt \+ \d+ completion tokens · cost 0\.\d+ USD", page.get_by_test_id("reply-usage").inner_text()
    )
    assert page.evaluate("document.documentElement.outerHTML").count("sk-") == 0  # no key in the page
    watched.shot("playground")

    page.get_by_role("link", name="Models").click()
    page.get_by_text(DEMO_MODEL).first.wait_for()
    watched.shot("models")

    page.get_by_role("link", name="Endpoints").click()
    page.get_by_text("No endpoints yet").wait_for()
    watched.shot("endpoints empty")
    page.get_by_label("Name", exact=True).fill("helpdesk")
    page.get_by_label("Model", exact=True).select_option(DEMO_MODEL)
    page.get_by_label("Default max_tokens").fill("8")
    page.get_by_role("button", name="Publish").click()
    page.wait_for_url(re.compile(r".*/endpoints/ep-[0-9a-f]+/$"))
    status = page.get_by_test_id("endpoint-status")
    page.wait_for_function("document.querySelector('[data-testid=endpoint-status]').textContent.trim() === 'ready'")
    assert status.inner_text() == "ready"  # by htmx polling, without a reload
    page.locator("canvas[data-chart]").wait_for()
    assert page.evaluate("!!Chart.getChart(document.querySelector('canvas[data-chart]'))")
    watched.shot("endpoint ready")
    endpoint = Endpoint.all_orgs.get(name="helpdesk")
    assert endpoint.defaults == {"max_tokens": 8}

    page.get_by_role("link", name="Try it in the playground").click()
    page.get_by_label("Your message").fill("Hi there")
    page.get_by_role("button", name="Send").click()
    page.get_by_test_id("reply-usage").wait_for()
    assert re.search(r"completion tokens", page.get_by_test_id("reply-usage").inner_text())
    watched.shot("playground on the endpoint")
    page.go_back()

    page.get_by_role("button", name="Stop").click()
    page.get_by_test_id("endpoint-status").filter(has_text="stopped").wait_for()
    watched.shot("endpoint stopped")
    # The worker unpublishes it (its placements go): let it finish before the database is reset.
    deadline = time.monotonic() + 30
    while EndpointReplica.all_orgs.filter(endpoint_id=endpoint.pk).exists():
        assert time.monotonic() < deadline, "the stopped endpoint was not unpublished"
        time.sleep(0.2)

    watched.goto_error_page("/orgs/journey-labs/no-such-page/", 404)
    page.get_by_test_id("error-page").wait_for()
    watched.shot("not found")
