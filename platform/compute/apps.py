from django.apps import AppConfig


class ComputeConfig(AppConfig):
    verbose_name = "Compute"
    name = "compute"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from compute import worker_signals  # noqa: F401  (connects the worker registration receivers)
