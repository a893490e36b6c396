"""A usage record as the gateway writes one, for the billing tests to vary."""


def usage_record(organization_id: int, request_id: str, **overrides) -> dict:
    return {
        "request_id": request_id,
        "organization_id": organization_id,
        "api_key_id": None,
        "route": "chat.completions",
        "model": "m",
        "base_model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "price": None,
        "status_code": 200,
        "outcome": "ok",
        "latency_ms": 3,
        **overrides,
    }
