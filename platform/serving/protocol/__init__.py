"""The `/v1` wire protocol, parsed once with pydantic: the gateway parses a request, applies an
endpoint's rules to what it parsed and forwards only that; the runtime parses the same models.
Django-free (the runtime imports it)."""

from serving.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
