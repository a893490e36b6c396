"""The OpenAPI document covers the management API (/api/). The OpenAI-compatible surface under
/v1/ follows OpenAI's published API and is described in the README."""


def management_api_only(endpoints):
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/")]
