from django.apps import AppConfig


class TenancyConfig(AppConfig):
    verbose_name = "Organizations and access"
    name = "tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tenancy import auth_events  # noqa: F401  (connects the sign-in audit receivers)
