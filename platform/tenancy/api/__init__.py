"""The management REST API's shared machinery (authentication, scoping, errors, pagination) and
the tenancy endpoints (organizations, members, invitations, keys, audit log)."""
