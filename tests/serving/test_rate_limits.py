"""Rate limits are one limit however many web processes enforce it."""

import asyncio
import os
import time

import httpx
import pytest

from serving.gateway import ratelimit
from tenancy import services
from tenancy.audit import Actor
from tenancy.keyauth import KeyPrincipal
from tests.conftest import DEMO_MODEL, start_web


def principal(**limits) -> KeyPrincipal:
    return KeyPrincipal(
        key_id=os.urandom(6).hex(),
        name="k",
        organization_id=int.from_bytes(os.urandom(3)),
        organization_slug="o",
        organization_status="active",
        suspended_reason="",
        scopes=frozenset(),
        expires_at=None,
        created_by_id=None,
        **limits,
    )


def test_concurrent_requests_never_overshoot_and_refusals_cost_nothing():
    async def scenario():
        who = principal(key_rpm=7, key_tpm=10_000)
        results = await asyncio.gather(*[ratelimit.acquire(who, 100) for _ in range(20)], return_exceptions=True)
        granted = [r for r in results if isinstance(r, ratelimit.Grant)]
        refused = [r for r in results if not isinstance(r, ratelimit.Grant)]
        assert len(granted) == 7 and len(refused) == 13
        assert all(r.status == 429 and 1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
        # Tokens: the 7 grants reserved 700; correcting them to 10 each frees room for more tokens.
        for grant in granted:
            await ratelimit.correct(grant, 10)
        tokens_only = principal(key_rpm=1000, key_tpm=250)
        assert isinstance(await ratelimit.acquire(tokens_only, 200), ratelimit.Grant)
        with pytest.raises(Exception) as over:
            await ratelimit.acquire(tokens_only, 100)
        assert "tokens per minute" in over.value.message
        with pytest.raises(Exception) as too_big:
            await ratelimit.acquire(principal(key_tpm=50), 100)
        assert "Request too large" in too_big.value.message

    wait_for_a_fresh_minute()
    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_web_processes_share_one_limit(runtime_server, make_tenant):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL: without Redis the embedded default runs one web process")
    runtime_server.register()
    tenant = make_tenant("shared")
    issued = services.create_api_key(organization_id=tenant.org.pk, name="k", actor=Actor())
    services.set_key_limits(issued.key.pk, organization_id=tenant.org.pk, rpm=5, tpm=None, actor=Actor())
    first, second = start_web(), start_web()
    try:
        wait_for_a_fresh_minute()
        body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        headers = {"Authorization": f"Bearer {issued.plaintext}"}
        codes = [
            httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
            for server in [first, second] * 5
        ]
        assert sorted(r.status_code for r in codes) == [200] * 5 + [429] * 5
        assert {r.status_code for r in codes[:5]} == {200}  # alternating servers, the first five pass
        assert all("retry-after" in r.headers for r in codes if r.status_code == 429)
    finally:
        for server in (first, second):
            server.process.terminate()
            server.process.wait(10)


def wait_for_a_fresh_minute(margin: float = 10.0) -> None:
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.1)


async def _counter(key: str) -> tuple[int, float]:
    """A counter's value and seconds to live, in whichever store the gateway uses."""
    store = ratelimit.store()
    if isinstance(store, ratelimit._RedisStore):
        from tenancy import shared_store

        client = shared_store.async_client()
        return int(await client.get(key) or 0), await client.ttl(key)
    value, expires = store._values.get(key, (0, 0.0))
    return value, expires - time.time()


def test_a_stream_counts_its_tokens_in_the_minutes_it_uses_and_every_counter_expires():
    async def scenario():
        who = principal(key_tpm=100_000)
        grant = await ratelimit.acquire(who, 1000)
        name = next(c.name for c in grant.counters if c.unit == "tokens" and c.scope == "API key")
        now = grant.window
        # Pretend the request started a minute ago (its reservation sits in the previous minute) and
        # that minute's counter has already expired: a late correction must not leave a key without a TTL.
        grant.window = now - 1
        old, new = ratelimit._key(now - 1, name), ratelimit._key(now, name)
        await ratelimit.apply(grant.carry_over(400))  # 400 tokens generated in the old minute, 600 left
        assert (await _counter(new))[0] == 1000 + 600  # the real acquire was in this minute, plus what moved in
        await ratelimit.correct(grant, 900)  # 500 more in the new minute: 100 of the reservation come back
        assert (await _counter(new))[0] == 1000 + 500
        for key in (old, new):
            assert 0 < (await _counter(key))[1] <= 120, key

    wait_for_a_fresh_minute()
    asyncio.run(scenario())
