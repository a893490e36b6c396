from django.apps import AppConfig


class BatchesConfig(AppConfig):
    verbose_name = "Batch API"
    name = "batches"
    default_auto_field = "django.db.models.BigAutoField"
