"""/v1/embeddings on the catalog's embedding model (all-MiniLM-L6-v2, from its PyPI package),
served by a replica the pool starts on the first call, called through the official SDK."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from billing.models import UsageEvent
from catalog.models import BaseModel
from tests.conftest import DEMO_MODEL, usage_row

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
EMBEDDING_MODEL = "all-minilm-l6-v2"


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_through_the_sdk_metered_exactly_and_bad_input_named(live_web, node_agent, make_tenant):
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)  # only the embedding model runs here
    tenant = make_tenant("embeds")
    key = tenant.key()
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=key, max_retries=0, timeout=180)

    # The SDK asks for base64 unless told otherwise, and decodes it.
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input=["cat", "kitten", "car"])
    cat, kitten, car = (item.embedding for item in answer.data)
    assert [item.index for item in answer.data] == [0, 1, 2] and len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, car) + 0.2
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in (cat, kitten, car))  # normalized, as the model says
    assert answer.model == EMBEDDING_MODEL
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 9  # [CLS] word [SEP], three times
    row = usage_row(answer._request_id)  # the SDK keeps the x-request-id the gateway answered
    assert row.route == "embeddings" and row.model == EMBEDDING_MODEL
    assert (row.prompt_tokens, row.completion_tokens, row.cost, row.outcome) == (9, 0, 9 * 20, "ok")

    # Floats, and the same text as the model's own token ids, embed alike.
    raw = httpx.post(
        live_web.url + "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": "cat", "encoding_format": "float"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ).json()
    assert max(abs(a - b) for a, b in zip(raw["data"][0]["embedding"], cat, strict=True)) < 1e-6
    as_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=[[4937]])  # "cat" in its vocabulary
    assert max(abs(a - b) for a, b in zip(as_ids.data[0].embedding, cat, strict=True)) < 1e-6

    def refused(**kwargs) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(**{"model": EMBEDDING_MODEL, "input": "a cat", **kwargs})
        return caught.value

    too_long = refused(input=["fine", "word " * 300])
    assert too_long.status_code == 400 and too_long.body["param"] == "input.1"
    assert "reads at most 256" in too_long.message
    shorter = refused(dimensions=64)
    assert shorter.status_code == 400 and shorter.body["param"] == "dimensions"
    empty = refused(input=[])
    assert empty.status_code == 400 and empty.body["param"] == "input"
    wrong_api = refused(model=DEMO_MODEL)
    assert wrong_api.status_code == 404 and "call /v1/chat/completions" in wrong_api.message
    with pytest.raises(openai.NotFoundError, match="is an embedding model: call /v1/embeddings"):
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "Hi"}])
    # Nothing refused was charged: the one charged row is the first call (and the two after it).
    charged = UsageEvent.all_orgs.filter(organization=tenant.org).exclude(cost=0)
    assert sorted(charged.values_list("prompt_tokens", flat=True)) == [3, 3, 9]
