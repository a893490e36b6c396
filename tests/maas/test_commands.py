import json
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from tenancy import keyauth
from tenancy.models import Membership, Organization


def test_create_org_and_api_key_print_the_key_alone_on_the_last_line(db):
    out = StringIO()
    call_command("create_org", "acme", "--owner", "boss@acme.test", "--name", "Acme", stdout=out)
    org = Organization.objects.get(slug="acme")
    assert org.name == "Acme"
    assert Membership.all_orgs.get(organization=org).user.email == "boss@acme.test"
    assert "password:" in out.getvalue()  # a new user got a generated password
    key_out, err = StringIO(), StringIO()
    call_command(
        "create_api_key", "acme", "--name", "deploy", "--scopes", "inference", "models:read", stdout=key_out, stderr=err
    )
    key = key_out.getvalue().splitlines()[-1]
    assert key.startswith("sk-") and key_out.getvalue().strip() == key
    principal = keyauth.authenticate(key)
    assert principal.organization_slug == "acme" and principal.scopes == {"inference", "models:read"}
    assert key not in err.getvalue()


def test_commands_explain_bad_input(db):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        call_command("create_api_key", "nope", "--name", "x")
    call_command("create_org", "dup", "--owner", "a@dup.test", stdout=StringIO())
    with pytest.raises(CommandError, match="taken"):
        call_command("create_org", "dup", "--owner", "a@dup.test", stdout=StringIO())
    with pytest.raises(CommandError, match="Invalid organization slug"):
        call_command("create_org", "Bad Slug!", "--owner", "a@dup.test", stdout=StringIO())


def test_seed_demo_is_idempotent_and_keeps_passwords_out_of_the_repo(db):
    call_command("seed_demo", stdout=StringIO())
    path = settings.VAR_DIR / "credentials.json"
    first = json.loads(path.read_text())
    call_command("seed_demo", stdout=StringIO())
    assert json.loads(path.read_text()) == first
    assert set(first) == {"admin@example.com", "owner@example.com"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert Organization.objects.filter(slug="demo").count() == 1
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.get(email="admin@example.com")
    assert admin.is_superuser and admin.check_password(first["admin@example.com"])


def test_create_api_key_with_another_instances_var_dir_explains_and_creates_nothing(tmp_path):
    """The README's second-instance recipe with the VAR_DIR left out: a clear message on stderr,
    nothing on stdout (so `| tail -n 1` yields no key), and no stray database."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in __import__("os").environ.items() if k != "DATABASE_URL"}
    env["VAR_DIR"] = str(tmp_path / "elsewhere")
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "demo", "--name", "my-key"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "There is no database at" in done.stderr and "VAR_DIR" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "elsewhere" / "db.sqlite3").exists()
