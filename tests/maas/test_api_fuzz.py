"""The API contract is written down and holds: schemathesis (property-based) fuzzes every
operation of the one OpenAPI document — the management API and the OpenAI-compatible /v1 —
against a live web process, with a real key and model servers behind the gateway: no 5xx, no
undocumented status code or content type, no answer that breaks its schema."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.models import BaseModel
from serving import services
from tests.conftest import DEMO_MODEL
from tests.serving.stub_upstream import Upstream

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error_and_no_contract_breach(live_web, node_agent, make_tenant, tmp_path):
    # Chat is served by a stub (fast, whatever is asked); the embedding model by its real replica,
    # which the pool starts on the first embeddings call (the node agent runs it).
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)
    tenant = make_tenant("fuzzed")
    key = tenant.key()
    services.register_backend(
        name="fuzz-upstream", url=Upstream("provider", words=3, delay=0).url, base_model=DEMO_MODEL, engine="openai"
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.org" = "{tenant.org.slug}"\n')  # fuzz inside the key's organization
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(config),
            "run",
            f"{live_web.url}/api/schema/",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--workers",
            "1",
            "--generation-database",
            "none",
            # Reproducible in CI; set FUZZ_SEED to explore other cases (a finding is replayable by seed).
            "--seed",
            os.environ.get("FUZZ_SEED", "20261122"),
        ],
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=500,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    # Both APIs, every operation (80 now: the management API and the 19 paths of /v1).
    assert selected and int(selected.group(1)) == int(selected.group(2)) >= 80, report[-2000:]
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", report).groups())
    assert generated == passed > 500, report[-2000:]
