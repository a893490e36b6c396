from catalog.models import BaseModel
from tests.conftest import key_client

DEMO = "smollm2-135m-instruct"
EMBEDDING = "all-minilm-l6-v2"


def add_model(model_id: str, **fields) -> BaseModel:
    source = {"format": "gguf", "path": "/models/x.gguf"}
    return BaseModel.objects.create(
        id=model_id, display_name=model_id, family="llama", context_length=2048, source=source, **fields
    )


def test_list_and_retrieve_models_in_the_openai_shape(tenant_a):
    client = key_client(tenant_a.key(scopes=["models:read"]))
    listed = client.get("/v1/models")
    assert listed.status_code == 200 and listed["Content-Type"] == "application/json"
    body = listed.json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [EMBEDDING, DEMO]
    model = body["data"][1]
    assert set(model) == {"id", "object", "created", "owned_by", "pricing"}
    assert model["object"] == "model" and model["owned_by"] == "system" and isinstance(model["created"], int)
    assert model["pricing"] == {
        "currency": "usd",
        "input_per_million": "0.1",
        "output_per_million": "0.2",
        "training_per_million": "1",
        "dedicated_replica_minute": "0.002",
        "batch_input_per_million": "0.05",
        "batch_output_per_million": "0.1",
        "input_cached_per_million": "0.05",
    }
    assert client.get(f"/v1/models/{DEMO}").json() == model
    assert body["data"][0]["pricing"]["input_per_million"] == "0.02"
    assert body["data"][0]["pricing"]["output_per_million"] == "0"
    assert listed["x-request-id"].startswith("req_")


def test_unknown_model_missing_key_and_wrong_method_are_openai_errors(tenant_a):
    client = key_client(tenant_a.key())
    missing = client.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "The model 'no-such-model' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    anonymous = key_client("").get("/v1/models")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "missing_api_key"
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/v1/models", {}, format="json")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    unknown = client.get("/v1/nothing/here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"


def test_request_ids_are_the_servers_and_client_ids_are_echoed_apart(tenant_a):
    client = key_client(tenant_a.key())
    chosen = client.get("/v1/models", HTTP_X_REQUEST_ID="req_mine", HTTP_X_CLIENT_REQUEST_ID="trace-12345")
    assert chosen["x-request-id"].startswith("req_") and chosen["x-request-id"] != "req_mine"
    assert chosen["x-client-request-id"] == "trace-12345"
    assert "x-client-request-id" not in client.get("/v1/models", HTTP_X_CLIENT_REQUEST_ID="bad id\x01")
    ids = {client.get("/healthz")["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_restricted_and_disabled_models_are_hidden_from_others(tenant_a, tenant_b):
    private = add_model("alpha-private", visibility=BaseModel.Visibility.RESTRICTED)
    private.allowed_organizations.add(tenant_a.org)
    add_model("retired", status=BaseModel.Status.DISABLED)
    add_model("old-but-served", status=BaseModel.Status.DEPRECATED)
    a, b = key_client(tenant_a.key()), key_client(tenant_b.key())
    assert [m["id"] for m in a.get("/v1/models").json()["data"]] == [EMBEDDING, "alpha-private", "old-but-served", DEMO]
    assert [m["id"] for m in b.get("/v1/models").json()["data"]] == [EMBEDDING, "old-but-served", DEMO]
    assert b.get("/v1/models/alpha-private").status_code == 404
    assert a.get("/v1/models/retired").status_code == 404


def test_suspended_organization_keys_get_403_with_a_clear_message(tenant_a, django_capture_on_commit_callbacks):
    from tenancy import services
    from tenancy.audit import Actor

    client = key_client(tenant_a.key())
    assert client.get("/v1/models").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.suspend_organization(tenant_a.org.pk, reason="payment overdue", actor=Actor())
    refused = client.get("/v1/models")
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "Organization 'alpha' is suspended. Reason: payment overdue. Contact the platform administrator.",
        "type": "permission_error",
        "param": None,
        "code": "organization_suspended",
    }
    with django_capture_on_commit_callbacks(execute=True):
        services.reactivate_organization(tenant_a.org.pk, actor=Actor())
    assert client.get("/v1/models").status_code == 200
