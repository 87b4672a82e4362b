"""Webhooks: registry events sent to HTTP receivers, signed, through a durable outbox
(``outbox.py`` queues and sends them).

    registry.add_webhook("https://hooks.example/mc", ["publish", "alias"], secret)
    registry.webhooks()              # each with its pending count and last attempt
    registry.test_webhook(hook_id)   # a "test" event, sent now
    registry.deliver_webhooks()      # what is due (a running `modelcrate serve` calls this)
"""

from __future__ import annotations

import time

from modelcrate.errors import NotFound, UsageError
from modelcrate.registry.audit import record
from modelcrate.registry.db import Database
from modelcrate.registry.outbox import EVENTS, deliver, queue
from modelcrate.registry.records import Delivery, Webhook

MIN_SECRET = 16


class WebhookMixin:
    """The registry's webhook methods (mixed into ``Registry``)."""

    db: Database
    actor: str

    def add_webhook(self, url: str, events: list[str], secret: str) -> Webhook:
        """Subscribe ``url`` to ``events`` (publish, alias, delete, rollout, alert)."""
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url}: a webhook URL must start with http:// or https://")
        unknown = sorted(set(events) - set(EVENTS))
        if unknown or not events:
            raise UsageError(
                f"unknown webhook events {unknown}; choose from {', '.join(EVENTS)}"
                if unknown
                else f"name at least one event: {', '.join(EVENTS)}"
            )
        if len(secret.strip()) < MIN_SECRET:
            raise UsageError(f"a webhook secret needs at least {MIN_SECRET} characters")
        subscribed = ",".join(e for e in EVENTS if e in events)
        with self.db.write() as tx:
            hook_id = tx.insert(
                "webhooks",
                url=url,
                events=subscribed,
                secret=secret.strip(),
                created_at=time.time(),
                created_by=self.actor,
            )
            record(tx, self.actor, "webhook-add", detail=f"{hook_id} {url} {subscribed}")
        assert hook_id is not None
        return self._webhook(hook_id)

    def webhooks(self) -> list[Webhook]:
        with self.db.read() as tx:
            ids = tx.column("SELECT id FROM webhooks ORDER BY id")
        return [self._webhook(i) for i in ids]

    def remove_webhook(self, hook_id: int) -> None:
        with self.db.write() as tx:
            url = tx.scalar("SELECT url FROM webhooks WHERE id = ?", hook_id)
            if url is None:
                raise NotFound(f"no webhook {hook_id}")
            tx.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", hook_id)
            tx.execute("DELETE FROM webhooks WHERE id = ?", hook_id)
            record(tx, self.actor, "webhook-remove", detail=f"{hook_id} {url}")

    def test_webhook(self, hook_id: int) -> Delivery:
        """Send a ``test`` event to one hook now (queued like any other if it fails)."""
        with self.db.write() as tx:
            if tx.scalar("SELECT id FROM webhooks WHERE id = ?", hook_id) is None:
                raise NotFound(f"no webhook {hook_id}")
            tx.info["webhooks-after-commit"] = True  # sent below, not after the commit
            queue(tx, [hook_id], "test", {"actor": self.actor})
        sent = deliver(self.db, webhook=hook_id)
        return sent[-1]

    def deliver_webhooks(self) -> list[Delivery]:
        """Send every delivery that is due (retries included)."""
        return deliver(self.db)

    def _webhook(self, hook_id: int) -> Webhook:
        with self.db.read() as tx:
            row = tx.first(
                "SELECT id, url, events, created_at, created_by FROM webhooks WHERE id = ?",
                hook_id,
            )
            if row is None:
                raise NotFound(f"no webhook {hook_id}")
            pending = tx.scalar(
                "SELECT count(*) FROM webhook_deliveries "
                "WHERE webhook_id = ? AND delivered_at IS NULL",
                hook_id,
            )
            last = tx.first(
                "SELECT event, last_status, last_error, delivered_at FROM webhook_deliveries "
                "WHERE webhook_id = ? AND attempts > 0 ORDER BY id DESC LIMIT 1",
                hook_id,
            )
            return Webhook(
                id=row.id,
                url=row.url,
                events=row.events.split(","),
                created_at=row.created_at,
                created_by=row.created_by,
                pending=int(pending or 0),
                last_event=last.event if last else None,
                last_status=last.last_status if last else None,
                last_error=last.last_error if last else None,
                last_delivered=last.delivered_at is not None if last else None,
            )
