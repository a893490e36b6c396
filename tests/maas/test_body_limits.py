"""Request bodies are bounded before they are read: an oversized or anonymous body is refused
while it arrives, and nothing of it is written to disk (the server process's own write counter,
/proc/<pid>/io `wchar`, shows it)."""

import os
import select
import socket
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest

from tests.conftest import start_web

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
MiB = 1 << 20
UPLOAD_LIMIT = MiB


@pytest.fixture
def server(tmp_path):
    spool = tmp_path / "tmp"
    spool.mkdir()
    web = start_web({"FILE_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT), "TMPDIR": str(spool)})
    web.spool = spool
    yield web
    web.process.terminate()
    web.process.wait(10)


def written_bytes(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/io").read_text().splitlines() if x.startswith("wchar:"))
    return int(line.split()[1])


def post_chunked(url: str, path: str, total: int, headers: dict | None = None) -> tuple[int, dict, int]:
    """POST `total` bytes in chunks until the server answers; return (status, JSON body, bytes sent)."""
    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    head = {"Host": where.netloc, "Transfer-Encoding": "chunked", "Content-Type": "application/json", **(headers or {})}
    sock.sendall(
        f"POST {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n"
    )
    sent, chunk = 0, b"x" * (64 * 1024)
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: the rest is never read
    reply = b""
    try:
        while part := sock.recv(65536):
            reply += part
    except ConnectionResetError:
        pass
    sock.close()
    head_text, _, body = reply.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), orjson.loads(body), sent


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/sign-in/", 2 * MiB), ("/v1/chat/completions", 2 * MiB), ("/api/orgs/alpha/members/", 2 * MiB)],
)
def test_a_chunked_body_over_the_limit_gets_413_and_nothing_is_spooled(server, path, limit):
    before = written_bytes(server.process.pid)
    status, body, sent = post_chunked(server.url, path, 16 * MiB)
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and "2 MiB" in body["error"]["message"]
    assert limit < sent < 16 * MiB  # refused while the body was still arriving
    assert written_bytes(server.process.pid) - before < MiB  # nothing of it written anywhere
    assert os.listdir(server.spool) == []


def test_an_upload_over_the_limit_gets_413_while_it_arrives(server, tenant_a):
    key = tenant_a.key()
    before = written_bytes(server.process.pid)
    status, body, sent = post_chunked(
        server.url, "/v1/files", 16 * MiB, {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data"}
    )
    assert status == 413 and body["error"]["code"] == "file_too_large"
    assert "1 MiB" in body["error"]["message"]
    assert sent < 16 * MiB
    assert written_bytes(server.process.pid) - before < 2 * MiB  # at most the allowed part, spooled in memory
    assert os.listdir(server.spool) == []


@pytest.mark.parametrize("path", ["/v1/files", "/orgs/alpha/data/"])
def test_an_anonymous_upload_is_refused_before_its_body_is_read(server, tenant_a, path):
    before = written_bytes(server.process.pid)
    status, body, sent = post_chunked(server.url, path, 16 * MiB, {"Content-Type": "multipart/form-data"})
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert sent < 16 * MiB
    assert written_bytes(server.process.pid) - before < MiB
    status, body, _ = post_chunked(server.url, "/v1/files", MiB // 2, {"Authorization": "Bearer sk-not-a-real-key"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    inference_only = tenant_a.key(scopes=["inference"])
    status, body, _ = post_chunked(server.url, "/v1/files", MiB // 2, {"Authorization": f"Bearer {inference_only}"})
    assert status == 403 and body["error"]["code"] == "insufficient_scope"


def test_a_declared_length_over_the_limit_is_refused_without_reading(server):
    where = urlparse(server.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        reply = b""
        while part := sock.recv(65536):
            reply += part
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"type":"invalid_request_error"' in reply


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/orgs/alpha/keys/"), ("PATCH", "/api/orgs/alpha/"), ("POST", "/v1/fine_tuning/jobs")],
)
def test_deeply_nested_json_is_a_400_not_a_server_error(tenant_a, method, path):
    """Python's json module raised RecursionError on [[[[…]]]] (a 500 with an HTML page); every
    JSON body is now parsed with bounded nesting."""
    from tests.conftest import key_client

    client = key_client(tenant_a.key())
    for body in ("[" * 50_000 + "]" * 50_000, '{"a":' * 40 + "1" + "}" * 40):
        response = client.generic(method, path, body, content_type="application/json")
        assert response.status_code == 400, (path, response.content[:200])
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "url",
    ["/v1/files?after=%00x", "/api/orgs/alpha/keys/?after=a%00", "/v1/files/file-%00", "/v1/models?x=%C2%8B%00"],
)
def test_a_nul_in_the_url_is_a_400_not_a_database_error(server, tenant_a, url):
    """Found by the API fuzzer: a NUL in a query parameter reached PostgreSQL, which refuses it (500)."""
    import httpx

    response = httpx.get(server.url + url, headers={"Authorization": f"Bearer {tenant_a.key()}"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_url"


def test_a_nul_in_the_model_name_is_a_400(server, tenant_a):
    import httpx

    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "smollm2\u0000", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {tenant_a.key()}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_the_consoles_upload_takes_files_over_the_request_body_limit(live_web, tenant_a):
    """Through the ASGI app (the test client skips that layer): a signed-in owner's 3 MiB training
    file is stored, not refused as an oversized request body."""
    import json
    import re

    import httpx

    from fine_tuning.models import File
    from tests.conftest import PASSWORD

    line = json.dumps({"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y"}]})
    data = ("\n".join([line] * (3 * MiB // len(line) + 1)) + "\n").encode()
    assert len(data) > 2 * MiB  # REQUEST_BODY_MAX_BYTES: what any other form may send
    with httpx.Client(base_url=live_web.url, timeout=60) as browser:
        page = browser.get("/sign-in/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        signed = browser.post(
            "/sign-in/", data={"username": tenant_a.owner.email, "password": PASSWORD, "csrfmiddlewaretoken": token}
        )
        assert signed.status_code == 302
        upload = browser.post(
            f"/orgs/{tenant_a.org.slug}/data/",
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            files={"file": ("big.jsonl", data, "application/jsonl")},
        )
    assert upload.status_code == 302, upload.text[:500]
    assert File.all_orgs.get(organization=tenant_a.org).bytes == len(data)
