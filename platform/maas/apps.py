from django.apps import AppConfig


class MaasConfig(AppConfig):
    name = "maas"
