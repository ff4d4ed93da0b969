"""Alerts of the coordinator (deadlock found, wait exceeded, agent killed): to the log and, when a
URL is configured, to a webhook as a JSON POST.

The event log copy is written by the coordinator in the transaction that detected the condition; this
module only does the side channels. A webhook failure is logged and never raised: an alert must not
break the lease call that noticed the problem.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from typing import Any

from eventstore.core.events import Event

log = logging.getLogger("eventstore.coordination.alerts")

WEBHOOK_ENV = "EVENTSTORE_ALERT_WEBHOOK"


def alert_body(event: Event) -> dict[str, Any]:
    """The JSON document posted for an alert: the event type and its payload."""
    return {"source": "eventstore.coordinator", "type": event.event_type,
            "payload": event.model_dump(mode="json")}


class Alerter:
    """Sends alerts to the log and to an optional webhook (``EVENTSTORE_ALERT_WEBHOOK`` by default)."""

    def __init__(self, webhook_url: str | None = None, *, timeout: float = 2.0,
                 background: bool = True) -> None:
        self.webhook_url = webhook_url if webhook_url is not None else (os.environ.get(WEBHOOK_ENV) or None)
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://", "https://")):
            from eventstore.core.errors import ConfigurationError

            raise ConfigurationError(f"alert webhook must be an http(s) URL, got {self.webhook_url!r}")
        self.timeout = timeout
        self.background = background

    def send(self, event: Event) -> None:
        """Log the alert, then post it to the webhook (in a daemon thread unless ``background`` is off)."""
        log.warning("coordination alert %s: %s", event.event_type, event.model_dump_json())
        if self.webhook_url is None:
            return
        if self.background:
            threading.Thread(target=self.post, args=(event,), name="eventstore-alert", daemon=True).start()
        else:
            self.post(event)

    def post(self, event: Event) -> bool:
        """POST the alert as JSON; True on a 2xx answer. Failures are logged, never raised."""
        if self.webhook_url is None:
            return False
        data = json.dumps(alert_body(event)).encode()
        req = urllib.request.Request(self.webhook_url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # http(s) checked
                ok = 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.error("alert webhook %s failed for %s: %s", self.webhook_url, event.event_type, e)
            return False
        if not ok:
            log.error("alert webhook %s answered %s for %s", self.webhook_url, resp.status, event.event_type)
        return ok
