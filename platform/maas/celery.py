"""The Celery application. Workers start it with `celery -A maas ...` from platform/."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")

app = Celery("maas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
