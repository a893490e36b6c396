"""ARCHITECTURE.md §1: platform/ is a source root, not a package, and the import direction holds."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_platform_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_import_platform_is_the_standard_library():
    import platform
    import uuid

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert platform.system() == "Linux" and platform.python_implementation() == "CPython"  # stdlib functions
    assert len(str(uuid.uuid4())) == 36


def test_fresh_interpreter_with_source_roots_keeps_stdlib_platform():
    # The same check in a clean process, with the path every entry point uses.
    code = "import platform, uuid, django; print(platform.__file__); print(uuid.uuid4())"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    module_file, generated = out.splitlines()
    assert Path(module_file).resolve().parent == Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert len(generated) == 36


def test_import_direction_and_standalone_modules():
    """import-linter checks the layer order and that the loader imports no Django."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"}
    result = subprocess.run(
        [Path(sys.executable).parent / "lint-imports"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_standalone_processes_load_without_django():
    code = (
        "import sys; import catalog.loader, serving.runtime.app, serving.runtime.engine, fine_tuning.trainer.train; "
        "app = {'django', 'rest_framework', 'celery', 'tenancy', 'maas'}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in app); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
