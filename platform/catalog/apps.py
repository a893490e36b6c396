from django.apps import AppConfig


class CatalogConfig(AppConfig):
    verbose_name = "Model catalog"
    name = "catalog"
    default_auto_field = "django.db.models.BigAutoField"
