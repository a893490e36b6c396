"""Stripe offline: localstripe (a stateful fake Stripe server from PyPI) on loopback, and in front
of it a small proxy that answers the one thing localstripe lacks for us — standalone invoices
(`POST /v1/invoices`, `POST /v1/invoices/{id}/finalize`, `POST /v1/invoices/{id}/pay`) — and
forwards everything else.

The proxy's invoice is built from what the SDK sent: it gathers the customer's pending invoice
items from localstripe (which the provider created there through the real SDK), so the test can
check that the invoice Stripe would collect totals what we billed."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import httpx

SECRET_KEY = "sk_test_maas"
WEBHOOK_SECRET = "whsec_maas_test"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_localstripe() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    binary = Path(sys.executable).with_name("localstripe")
    process = subprocess.Popen(
        [str(binary), "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/v1/customers", auth=(SECRET_KEY, ""), timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("localstripe did not start")


def register_webhook(localstripe_url: str, target: str) -> None:
    response = httpx.post(
        f"{localstripe_url}/_config/webhooks/maas", data={"url": target, "secret": WEBHOOK_SECRET}, timeout=5
    )
    response.raise_for_status()


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A Stripe-Signature header for this payload, as Stripe computes it."""
    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def event(event_type: str, obj: dict, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        }
    ).encode()


class InvoicesProxy:
    """Loopback proxy: /v1/invoices answered here, the rest forwarded to localstripe."""

    def __init__(self, localstripe_url: str):
        self.upstream = localstripe_url
        self.invoices: dict[str, dict] = {}
        self.idempotent: dict[str, dict] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST" and self.path.startswith("/v1/invoices"):
                    status, answer = proxy.invoice_call(self.path, dict(parse_qsl(body.decode())), self.headers)
                    payload = json.dumps(answer).encode()
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                    response = httpx.request(
                        self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=30
                    )
                    status, payload = response.status_code, response.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoice_call(self, path: str, form: dict, headers) -> tuple[int, dict]:
        key = headers.get("Idempotency-Key")
        if key and key in self.idempotent:
            return 200, self.idempotent[key]
        parts = path.split("?")[0].strip("/").split("/")
        if parts == ["v1", "invoices"]:
            customer = form["customer"]
            items = httpx.get(
                f"{self.upstream}/v1/invoiceitems",
                params={"customer": customer},
                auth=(SECRET_KEY, ""),
                timeout=10,
            ).json()["data"]
            pending = [i for i in items if not i.get("invoice")]
            invoice = {
                "id": f"in_{uuid.uuid4().hex[:24]}",
                "object": "invoice",
                "customer": customer,
                "status": "draft",
                "collection_method": form.get("collection_method"),
                "default_payment_method": form.get("default_payment_method"),
                "metadata": {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")},
                "lines": {"object": "list", "data": pending},
                "total": sum(i["amount"] for i in pending),
                "currency": pending[0]["currency"] if pending else "usd",
            }
            self.invoices[invoice["id"]] = invoice
        elif len(parts) == 4 and parts[:2] == ["v1", "invoices"] and parts[3] == "finalize":
            invoice = self.invoices.get(parts[2])
            if invoice is None:
                return 404, {"error": {"message": "No such invoice", "type": "invalid_request_error"}}
            invoice["status"] = "open"
        elif len(parts) == 4 and parts[:2] == ["v1", "invoices"] and parts[3] == "pay":
            # As Stripe: an invoice is paid once; paying a paid one is refused.
            invoice = self.invoices.get(parts[2])
            if invoice is None:
                return 404, {"error": {"message": "No such invoice", "type": "invalid_request_error"}}
            if invoice["status"] == "paid":
                return 400, {"error": {"message": "Invoice is already paid", "type": "invalid_request_error"}}
            invoice["status"] = "paid"
            invoice["payments"] = invoice.get("payments", 0) + 1
        else:
            return 404, {"error": {"message": "Not implemented by the test proxy", "type": "invalid_request_error"}}
        if key:
            self.idempotent[key] = invoice
        return 200, invoice

    def close(self) -> None:
        self.server.shutdown()
