"""The playground's "Compare texts" panel in Chromium: a member signs in, embeds three lines with
the catalog's embedding model (its first call starts its replica on the pool) and reads the pairs
ranked by similarity, with the call's tokens and cost from the ledger."""

from __future__ import annotations

import pytest

from billing.models import UsageEvent
from catalog.models import BaseModel
from tests.browser.conftest import sign_in
from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_compare_texts_ranks_the_pairs_by_meaning(watched, node_agent, make_tenant):
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)  # only the embedding model runs here
    tenant = make_tenant("compare")
    page = watched.page
    sign_in(page, tenant)
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Embedding model").select_option("all-minilm-l6-v2")
    page.get_by_label("Texts").fill("a cat\n\na kitten\na car")  # the blank line is ignored
    page.get_by_role("button", name="Compare").click()
    rows = page.get_by_test_id("similarities").locator("tr")
    rows.nth(1).wait_for(timeout=120_000)  # the model's first call waits for its replica
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(1, 4)]
    assert cells[0][1:] == ["a cat", "a kitten"], cells  # the closest pair in meaning comes first
    scores = [float(c[0]) for c in cells]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] + 0.1
    usage = page.get_by_test_id("compare-usage")
    usage.wait_for()
    row = UsageEvent.all_orgs.get(organization=tenant.org, route="embeddings")
    assert usage.inner_text().startswith(f"{row.prompt_tokens} tokens · cost ")
    watched.shot("compare texts")

    page.get_by_label("Texts").fill("only one line")
    page.get_by_role("button", name="Compare").click()
    assert page.get_by_role("alert").inner_text() == "Write 2 to 8 texts, one per line."
