"""Tenants: organizations, memberships and roles, invitations, API keys, the audit log, and the
scoping that makes every tenant-owned query fail closed outside an organization."""
