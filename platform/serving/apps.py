from django.apps import AppConfig


class ServingConfig(AppConfig):
    verbose_name = "Serving"
    name = "serving"
    default_auto_field = "django.db.models.BigAutoField"
