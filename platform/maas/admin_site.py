"""The back office. Staff act across tenants, so every admin view runs in the explicitly named
all-organizations scope; tenant-owned default managers keep failing closed everywhere else."""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig

from tenancy import scope


class MaasAdminSite(admin.AdminSite):
    site_header = "MaaS platform back office"
    site_title = "MaaS back office"
    index_title = "Operations"
    index_template = "admin/maas_index.html"

    def get_urls(self):
        from django.urls import path

        from maas.pool_view import pool_page

        return [
            path("pool/", self.admin_view(lambda request: pool_page(request, self)), name="pool"),
            *super().get_urls(),
        ]

    def admin_view(self, view, cacheable=False):
        wrapped = super().admin_view(view, cacheable)

        def in_all_organizations(request, *args, **kwargs):
            with scope.all_organizations():
                response = wrapped(request, *args, **kwargs)
                # Admin pages are lazy TemplateResponses: render while the scope is still entered.
                if getattr(response, "is_rendered", True) is False:
                    response.render()
                return response

        in_all_organizations.__wrapped__ = wrapped
        for attr in ("csrf_exempt", "login_required"):
            if hasattr(wrapped, attr):
                setattr(in_all_organizations, attr, getattr(wrapped, attr))
        return in_all_organizations


class AdminConfig(DjangoAdminConfig):
    default_site = "maas.admin_site.MaasAdminSite"
