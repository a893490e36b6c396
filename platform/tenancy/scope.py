"""The current organization scope, carried in a context variable.

Tenant-owned models filter their default manager by it and raise when it is unset, so a query
that forgot its tenant fails loudly instead of returning every tenant's rows. The one way to see
all organizations through the default manager is the explicitly named `all_organizations()`
scope (the back office, periodic fan-out); plain code paths use `Model.all_orgs` for that.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager


class TenantScopeMissing(RuntimeError):
    """A tenant-owned model was queried outside any organization scope."""


class _AllOrganizations:
    def __repr__(self) -> str:
        return "ALL_ORGANIZATIONS"


ALL_ORGANIZATIONS = _AllOrganizations()

_current: contextvars.ContextVar[int | _AllOrganizations | None] = contextvars.ContextVar(
    "maas_organization_scope", default=None
)


def current() -> int | _AllOrganizations:
    value = _current.get()
    if value is None:
        raise TenantScopeMissing(
            "Tenant-owned data was queried outside an organization scope; "
            "wrap the call in tenancy.scope.organization(<id>) or use the model's all_orgs manager."
        )
    return value


def current_organization_id() -> int:
    value = current()
    if value is ALL_ORGANIZATIONS:
        raise TenantScopeMissing("This needs one organization, but the scope is all organizations.")
    return value  # type: ignore[return-value]


def enter(organization_id: int | _AllOrganizations) -> contextvars.Token:
    if organization_id is None:
        raise TenantScopeMissing("Cannot enter the scope of no organization")
    return _current.set(organization_id)


def leave(token: contextvars.Token) -> None:
    _current.reset(token)


@contextmanager
def organization(organization_id: int) -> Iterator[None]:
    token = enter(organization_id)
    try:
        yield
    finally:
        leave(token)


@contextmanager
def all_organizations() -> Iterator[None]:
    token = enter(ALL_ORGANIZATIONS)
    try:
        yield
    finally:
        leave(token)


def scoped(function):
    """A service of one organization: it runs inside that organization's scope (its keyword
    `organization_id`), so the models' default managers are scoped to it and a query that forgot
    the organization cannot reach another's rows. Called inside another organization's scope, it
    refuses (a caller mixing organizations is a bug)."""
    import functools

    @functools.wraps(function)
    def run(*args, organization_id: int, **kwargs):
        outer = _current.get()
        if outer is not None and outer is not ALL_ORGANIZATIONS and outer != organization_id:
            raise TenantScopeMissing(
                f"{function.__qualname__} was called for organization {organization_id} in the scope of {outer}"
            )
        with organization(organization_id):
            return function(*args, organization_id=organization_id, **kwargs)

    return run
