#!/usr/bin/env python
"""Django's command-line entry point.

platform/ is a source root, not a package (a package named `platform` would shadow the
standard library), so it is put on sys.path before anything imports Django.
"""

import os
import sys
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parent
    sys.path[:0] = [str(root), str(root / "platform")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
