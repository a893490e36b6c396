"""What every console page shares: the organization from the URL (404 unless a member), the role
check, the tenant scope, and the navigation context."""

from __future__ import annotations

import functools

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from tenancy import scope, selectors
from tenancy.roles import Permission as P


def too_many_attempts(request, template: str, context: dict, wait: int):
    message = f"Too many attempts from here. Try again in {max(1, wait // 60)} minutes."
    response = render(request, template, {**context, "throttled": message}, status=429)
    response["Retry-After"] = str(wait)
    return response


def org_page(permission: P, model=None, *, allow_suspended: bool = False):
    """Resolve the organization from the URL (404 unless a member), check the role, enter the scope.
    `model` names the tenant-owned model whose id the URL carries (the isolation test reads it).
    `allow_suspended`: the page stays open to a suspended organization (billing: to see why, and pay)."""

    def decorate(view):
        @functools.wraps(view)
        @login_required
        def wrapped(request, org, *args, **kwargs):
            access = selectors.access_by_membership(request.user, org)
            if access is None:
                raise Http404("No such organization")
            if not access.organization.is_active and not allow_suspended:
                return render(request, "frontend/suspended.html", {"organization": access.organization}, status=403)
            if not access.can(permission):
                return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
            with scope.organization(access.organization.pk):
                return view(request, access, *args, **kwargs)

        wrapped.model = model
        return wrapped

    return decorate


def nav_context(access, active: str, **extra):
    return {
        "access": access,
        "organization": access.organization,
        "active": active,
        "P": {p.name: p.value for p in P},
        "switcher": selectors.memberships_of_user(access.user_id) if access.user_id else [],
        **extra,
    }
