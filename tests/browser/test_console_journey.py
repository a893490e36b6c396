"""The console as a new customer meets it, in Chromium: sign up, create a key (a reload makes no
second one), a streamed playground reply with its cost, training data with errors reported by line,
a good file, a fine-tune on auto that succeeds with its loss chart and before/after evaluation,
the fine-tuned model published as an endpoint that becomes ready without a reload, the playground
on it, stop; unknown pages are styled. Every page is screenshotted; console errors and
requests off the machine fail the test."""

from __future__ import annotations

import re
import time

import pytest

from fine_tuning.models import File
from serving.models import Endpoint, EndpointReplica
from tenancy.models import APIKey
from tests.conftest import DEMO_MODEL, PASSWORD
from tests.frontend.test_fine_tuning_pages import BAD, GOOD

VALID = "\n".join(GOOD.split("\n")[::3])  # a few of the same kind, to measure before and after

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def confirmation_link(address: str, timeout: float = 15) -> str:
    """The confirmation link of the newest message to `address` in the mail folder (the embedded
    default's mail backend writes each message to a file there)."""
    import time
    from pathlib import Path

    from django.conf import settings

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(Path(settings.EMAIL_FILE_PATH).glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
            text = path.read_text()
            found = re.search(r"https?://\S+/confirm-email/\S+/", text)
            if f"To: {address}" in text and found:
                return found.group(0)
        time.sleep(0.2)
    raise AssertionError(f"no confirmation mail to {address}")


def upload(page, name: str, text: str) -> None:
    page.get_by_label("Training data (.jsonl)").set_input_files(
        files=[{"name": name, "mimeType": "application/jsonl", "buffer": text.encode()}]
    )
    page.get_by_role("button", name="Upload and validate").click()


def test_the_customer_journey(watched, runtime_server, celery_worker):
    from tenancy import shared_store, throttle

    runtime_server.register()
    # The suite's in-process sign-ups count on the shared store from the same loopback address.
    shared_store.forget(throttle._key("sign-up-ip", "127.0.0.1"))
    page = watched.page
    page.goto("/sign-up/")
    watched.shot("sign up")
    page.get_by_label("Email").fill("ada@journey.test")
    page.get_by_label("Your name").fill("Ada")
    page.get_by_label("Organization name").fill("Journey Labs")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account and organization").click()
    page.get_by_text("Check your inbox").wait_for()
    watched.shot("check your inbox")
    page.goto(confirmation_link("ada@journey.test"))  # the link in the mail the web process wrote
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

    # Training data: a file with errors is reported line by line; a good one is ready to train on.
    page.get_by_role("link", name="Data", exact=True).click()
    page.get_by_text("No training data yet").wait_for()
    upload(page, "broken.jsonl", "\n".join(BAD))
    page.wait_for_url(re.compile(r".*/data/file-[0-9a-z]+/$"))
    page.get_by_test_id("file-errors").wait_for()  # validated by the worker; the page updates itself
    errors = page.get_by_test_id("file-errors").inner_text()
    assert re.search(r"^4\s.*assistant", errors, re.M) and re.search(r"^5\s", errors, re.M)
    watched.shot("data with errors")
    for name, text in (("capitals.jsonl", GOOD), ("held-out.jsonl", VALID)):
        page.get_by_role("link", name="All training data").click()
        upload(page, name, text)
        page.get_by_role("link", name="Start a fine-tune with it").wait_for()
        watched.shot(f"{name} ready")
    page.get_by_role("link", name="Fine-tuning").click()
    page.get_by_label("Training file").select_option(File.all_orgs.get(filename="capitals.jsonl").pk)
    page.get_by_label("Validation file").select_option(File.all_orgs.get(filename="held-out.jsonl").pk)

    # A fine-tune with every hyperparameter on auto: the estimate first, then the job page live.
    page.get_by_label("Suffix").fill("capitals")
    page.get_by_role("button", name="Estimate cost and time").click()
    assert "epochs" in page.get_by_test_id("estimate").inner_text()
    watched.shot("fine-tune estimate")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r".*/fine-tuning/ftjob-[0-9a-zA-Z]+/$"))
    page.get_by_test_id("job-status").filter(has_text="succeeded").wait_for(timeout=300_000)
    page.get_by_test_id("evaluation").wait_for()
    assert page.evaluate("Chart.getChart(document.querySelector('canvas[data-chart]')).data.labels.length") > 1
    tuned = page.get_by_test_id("fine-tuned-model").inner_text()
    assert tuned.startswith(f"ft:{DEMO_MODEL}:journey-labs:capitals:")
    watched.shot("job succeeded")

    page.get_by_role("link", name="Models").click()
    page.get_by_text(tuned).wait_for()
    watched.shot("models")

    page.get_by_role("link", name="Endpoints").click()
    page.get_by_text("No endpoints yet").wait_for()
    watched.shot("endpoints empty")
    page.get_by_label("Name", exact=True).fill("helpdesk")
    page.get_by_label("Model", exact=True).select_option(tuned)
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

    # The usage page shows those calls, the endpoint's among them, and what each cost.
    page.get_by_role("link", name="Usage").click()
    calls = page.get_by_test_id("recent-calls")
    calls.get_by_text(endpoint.pk).wait_for()
    assert calls.get_by_text("chat.completions").count() >= 2
    assert re.search(r"0\.0000\d+ USD", calls.inner_text())
    watched.shot("usage")
    page.goto(f"/orgs/journey-labs/endpoints/{endpoint.pk}/")

    page.get_by_role("button", name="Stop").click()
    page.get_by_test_id("endpoint-status").filter(has_text="stopped").wait_for()
    watched.shot("endpoint stopped")
    # The worker unpublishes it (its placements go): let it finish before the database is reset.
    deadline = time.monotonic() + 30
    while EndpointReplica.all_orgs.filter(endpoint_id=endpoint.pk).exists():
        assert time.monotonic() < deadline, "the stopped endpoint was not unpublished"
        time.sleep(0.2)

    page.get_by_role("link", name="Members").click()
    page.get_by_text("ada@journey.test").first.wait_for()
    watched.shot("members")
    page.get_by_role("link", name="Audit log").click()
    page.get_by_text("endpoint.stopped").first.wait_for()
    watched.shot("audit log")
    page.get_by_role("link", name="Billing").click()
    page.get_by_role("button", name="Save limit").wait_for()
    watched.shot("billing")

    watched.goto_error_page("/orgs/journey-labs/no-such-page/", 404)
    page.get_by_test_id("error-page").wait_for()
    watched.shot("not found")
