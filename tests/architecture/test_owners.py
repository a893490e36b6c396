"""ARCHITECTURE.md §3: one module changes each state machine's rows. No other module of the app
writes them through a manager (update, create, delete and the like)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OWNERS = {
    "FineTuningJob": {"fine_tuning/jobs.py"},
    "Endpoint": {"platform/serving/endpoints.py"},
    "EndpointReplica": {"platform/serving/endpoints.py"},
    "Invoice": {"billing/invoicing.py"},
    "Batch": {"platform/batches/lifecycle.py"},
    "BatchRequest": {"platform/batches/lifecycle.py"},
    "Payment": {"billing/paying.py"},
    "Reservation": {"billing/budgets.py"},
    "Allocation": {"platform/compute/allocations.py"},
    "Deployment": {"platform/serving/deployments.py"},
    "DeploymentEvent": {"platform/serving/deployments.py"},
    # The pool's replicas change state in serving.replicas; hand-registered ones in serving.services.
    "Backend": {"platform/serving/replicas.py", "platform/serving/services.py"},
}
WRITES = {"update", "create", "delete", "bulk_create", "bulk_update", "update_or_create", "get_or_create"}


def sources():
    for folder in ("platform", "billing", "fine_tuning", "frontend"):
        for path in (REPO / folder).rglob("*.py"):
            if "migrations" not in path.parts:
                yield path


def test_only_the_owner_writes_a_state_machines_rows():
    strays = []
    for path in sources():
        relative = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITES):
                continue
            named = {n.id for n in ast.walk(node.func) if isinstance(n, ast.Name)} & set(OWNERS)
            strays += [f"{relative}:{node.lineno} writes {model}" for model in named if relative not in OWNERS[model]]
    assert strays == []


def test_the_scan_sees_writes():
    """The scan above would find a write if there were one (so it cannot pass by seeing nothing)."""
    tree = ast.parse("Invoice.all_orgs.filter(pk=1).update(status='paid')")
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "update")
    assert {n.id for n in ast.walk(call.func) if isinstance(n, ast.Name)} == {"Invoice"}
