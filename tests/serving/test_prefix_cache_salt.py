"""What the gateway sends model servers to schedule a request: the organization's cache salt
(vLLM and our runtime then never reuse another salt's cached prompt blocks), the same for every
call of the organization and unguessable from its id; and a batch request's priority, to our
runtime and to the vLLM replicas the pool starts (with priority scheduling), not to a vLLM
registered by hand, which may lack it. Another OpenAI-compatible upstream gets neither."""

from serving import routing
from serving.gateway import inference

ROUTE = routing.Route("m", "m", None, ())


def replica(engine: str, pooled: bool = True) -> routing.Replica:
    return routing.Replica(f"{engine}-1", "http://127.0.0.1:1", engine, "", "m", True, pooled)


def test_each_organization_has_its_own_stable_salt_and_batch_requests_a_lower_priority():
    salts = {org: inference.prefix_cache_salt(org) for org in (1, 2, 3)}
    assert len(set(salts.values())) == 3 and salts[1] == inference.prefix_cache_salt(1)
    assert all(len(s) == 32 and str(org) != s for org, s in salts.items())
    interactive = inference._generation_body(ROUTE, {"messages": []}, salt=salts[1])
    batch = inference._generation_body(ROUTE, {"messages": []}, "batch", salts[1])
    for engine in ("builtin", "vllm"):
        assert interactive(replica(engine))["cache_salt"] == salts[1] and "priority" not in interactive(replica(engine))
        assert batch(replica(engine))["priority"] == inference.BATCH_PRIORITY
    assert "priority" not in batch(replica("vllm", pooled=False))
    assert not {"cache_salt", "priority"} & set(batch(replica("openai")))
