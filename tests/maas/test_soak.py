"""The soak (bench/soak.py), short: a minute and a half of mixed traffic against the whole platform as
`make run` starts it, while its web process and its model runtime are SIGKILLed; every answered
call has exactly one ledger row with the tokens of its answer, and no budget is overspent."""

import socket

import pytest
from django.conf import settings

from bench import soak
from tests.conftest import _database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _free_port_pair() -> int:
    """A port whose +100 (the runtime's) is free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 100 < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 100))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def test_a_short_soak_loses_nothing_and_overspends_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", _database_url())
    monkeypatch.setenv("MODEL_CACHE_DIR", str(settings.MODEL_CACHE_DIR))  # the suite's dequantized weights
    figures = soak.run(
        seconds=90,
        faults=["web", "runtime"],
        every=15,
        clients=3,
        jobs=0,
        seed=7,
        var_dir=tmp_path / "platform",
        port=_free_port_pair(),
    )
    print(figures)
    assert figures["answered"] > 20 and sum(figures["faults_injected"].values()) >= 3
    assert figures["rows_lost"] == 0, figures["lost_sample"]
    assert figures["duplicate_rows"] == 0
    assert figures["token_mismatches"] == 0, figures["mismatch_sample"]
    assert figures["overspent"] == 0, figures["overspent_detail"]
