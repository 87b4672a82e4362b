"""Webhooks: registry events sent to HTTP receivers, signed, through a durable outbox
(``outbox.py`` queues and sends them).

    registry.add_webhook("https://hooks.example/mc", ["publish", "alias"], secret)
    registry.webhooks()              # each with its pending count and last attempt
    registry.test_webhook(hook_id)   # a "test" event, sent now
    registry.deliver_webhooks()      # what is due (a running `modelcrate serve` calls this)
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, func, select

from modelcrate.errors import NotFound, UsageError
from modelcrate.registry.audit import record
from modelcrate.registry.db import DeliveryRow, WebhookRow, read_session, write_session
from modelcrate.registry.outbox import EVENTS, deliver, queue
from modelcrate.registry.records import Delivery, Webhook

MIN_SECRET = 16


class WebhookMixin:
    """The registry's webhook methods (mixed into ``Registry``)."""

    engine: Engine
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
        with write_session(self.engine) as session, session.begin():
            row = WebhookRow(
                url=url,
                events=",".join(e for e in EVENTS if e in events),
                secret=secret.strip(),
                created_at=time.time(),
                created_by=self.actor,
            )
            session.add(row)
            session.flush()
            record(session, self.actor, "webhook-add", detail=f"{row.id} {url} {row.events}")
            hook_id = row.id
        return self._webhook(hook_id)

    def webhooks(self) -> list[Webhook]:
        with read_session(self.engine) as session:
            ids = list(session.scalars(select(WebhookRow.id).order_by(WebhookRow.id)))
        return [self._webhook(i) for i in ids]

    def remove_webhook(self, hook_id: int) -> None:
        with write_session(self.engine) as session, session.begin():
            row = session.get(WebhookRow, hook_id)
            if row is None:
                raise NotFound(f"no webhook {hook_id}")
            session.query(DeliveryRow).filter(DeliveryRow.webhook_id == hook_id).delete()
            session.delete(row)
            record(session, self.actor, "webhook-remove", detail=f"{hook_id} {row.url}")

    def test_webhook(self, hook_id: int) -> Delivery:
        """Send a ``test`` event to one hook now (queued like any other if it fails)."""
        with write_session(self.engine) as session, session.begin():
            row = session.get(WebhookRow, hook_id)
            if row is None:
                raise NotFound(f"no webhook {hook_id}")
            session.info["webhooks-after-commit"] = True  # sent below, not after the commit
            queue(session, [row], "test", {"actor": self.actor})
        sent = deliver(self.engine, webhook=hook_id)
        return sent[-1]

    def deliver_webhooks(self) -> list[Delivery]:
        """Send every delivery that is due (retries included)."""
        return deliver(self.engine)

    def _webhook(self, hook_id: int) -> Webhook:
        with read_session(self.engine) as session:
            row = session.get(WebhookRow, hook_id)
            if row is None:
                raise NotFound(f"no webhook {hook_id}")
            pending = session.scalar(
                select(func.count())
                .select_from(DeliveryRow)
                .where(DeliveryRow.webhook_id == hook_id, DeliveryRow.delivered_at.is_(None))
            )
            last = session.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.webhook_id == hook_id, DeliveryRow.attempts > 0)
                .order_by(DeliveryRow.id.desc())
                .limit(1)
            ).first()
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
