import re


def test_api_docs_load_no_third_party_assets(client, tenant_a):
    client.force_login(tenant_a.owner)
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert "swagger-ui" in html


def test_console_pages_load_no_third_party_assets(client):
    html = client.get("/sign-in/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("vendor/htmx" in a for a in assets)
    assert all(a.startswith(("/", "#")) for a in assets), assets  # our own origin, or a place on the page
