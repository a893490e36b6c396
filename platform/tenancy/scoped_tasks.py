"""`@organization_task`: a Celery task that takes `organization_id` first and runs inside that
organization's scope, so a task's queries fail closed just like a request's."""

from __future__ import annotations

import functools

from celery import shared_task

from tenancy import scope


def organization_task(*task_args, **task_options):
    def decorate(func):
        @functools.wraps(func)
        def run_in_scope(*args, **kwargs):
            organization_id = kwargs.get("organization_id", args[0] if args else None)
            if not isinstance(organization_id, int):
                raise scope.TenantScopeMissing(
                    f"{func.__qualname__} is an organization task: pass organization_id (an int) first"
                )
            with scope.organization(organization_id):
                return func(*args, **kwargs)

        return shared_task(*task_args, **task_options)(run_in_scope)

    if len(task_args) == 1 and callable(task_args[0]) and not task_options:
        func, task_args = task_args[0], ()
        return decorate(func)
    return decorate
