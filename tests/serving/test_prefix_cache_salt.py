"""vLLM's prefix cache is kept apart per organization: every generation sent to a vLLM replica
carries the organization's own cache salt (vLLM then never reuses another salt's cached blocks),
the same for every call of the organization, unguessable from its id; our runtime is not sent it."""

from serving import routing
from serving.gateway import inference

ROUTE = routing.Route("m", "m", None, ())


def replica(engine: str) -> routing.Replica:
    return routing.Replica(f"{engine}-1", "http://127.0.0.1:1", engine, "", "m", True, True)


def test_each_organization_has_its_own_stable_salt_and_only_vllm_gets_it():
    salts = {org: inference.prefix_cache_salt(org) for org in (1, 2, 3)}
    assert len(set(salts.values())) == 3 and salts[1] == inference.prefix_cache_salt(1)
    assert all(len(s) == 32 and str(org) != s for org, s in salts.items())
    body_of = inference._generation_body(ROUTE, {"messages": []}, salt=salts[1])
    assert body_of(replica("vllm"))["cache_salt"] == salts[1]
    assert "cache_salt" not in body_of(replica("builtin"))
    assert "cache_salt" not in body_of(replica("openai"))
