"""Composition root: settings, URLs, ASGI/WSGI, the Celery app and the `run` supervisor."""

from maas.celery import app as celery_app

__all__ = ["celery_app"]
