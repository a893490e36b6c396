"""WSGI entry point, for servers that do not speak ASGI."""

import os
import sys
from pathlib import Path

sys.path[:0] = [
    p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])) if p not in sys.path
]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
