"""ASGI entry point (uvicorn): the console, the management API and the OpenAI-compatible gateway."""

import os
import sys
from pathlib import Path

sys.path[:0] = [
    p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])) if p not in sys.path
]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
