"""The webhook outbox: registry events queued as delivery rows, signed and sent.

Each event a hook subscribes to becomes a delivery row in the transaction of the change
it reports (``audit.record`` calls ``enqueue``): a committed change always has its
deliveries, a rolled-back one never does. The process that made the change sends them
right after its commit; what fails is retried by any running ``modelcrate serve`` with
backoff (1 s, doubling, at most 5 minutes apart), until the receiver answers 2xx: at
least once, never dropped. A claimed delivery is leased for a minute, so several servers
on one registry send it once unless a sender dies mid-send.

Receivers check ``X-Modelcrate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" with the hook's secret>`` and refuse an old ``t`` (a replay).
``X-Modelcrate-Event`` names the event, ``X-Modelcrate-Delivery`` its id (the same on
every retry, for deduplication). The secret is kept in the registry database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session

from modelcrate.registry.db import DeliveryRow, WebhookRow, read_session, write_session
from modelcrate.registry.records import Delivery

EVENTS = ("publish", "alias", "delete", "rollout", "alert")  # what a hook can subscribe to
ACTION_EVENTS = {  # audit actions -> the event they are
    "publish": "publish",
    "alias-set": "alias",
    "alias-rollback": "alias",
    "alias-delete": "alias",
    "delete": "delete",
    "rollout-start": "rollout",
    "rollout-step": "rollout",
    "rollout-promote": "rollout",
    "rollout-rollback": "rollout",
    "rollout-abort": "rollout",
    "slo-breach": "alert",
}
LEASE_S = 60.0
TIMEOUT_S = 5.0
MAX_BACKOFF_S = 300.0
log = logging.getLogger("modelcrate.webhooks")


def sign(secret: str, body: bytes, at: int) -> str:
    """The ``X-Modelcrate-Signature`` value for ``body`` sent at ``at`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def enqueue(session: Session, action: str, payload: dict[str, Any]) -> None:
    """Queue the event ``action`` stands for (if any) for every hook subscribed to it, in
    the caller's transaction; they are sent once it commits."""
    kind = ACTION_EVENTS.get(action)
    if kind is None:
        return
    hooks = [h for h in session.scalars(select(WebhookRow)) if kind in h.events.split(",")]
    if hooks:
        queue(session, hooks, kind, {"action": action, **payload})


def queue(session: Session, hooks: list[WebhookRow], kind: str, payload: dict[str, Any]) -> None:
    now = time.time()
    body = json.dumps({"id": uuid.uuid4().hex, "event": kind, "at": now, **payload})
    for hook in hooks:
        session.add(
            DeliveryRow(
                webhook_id=hook.id,
                event=kind,
                body=body,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
    if not session.info.get("webhooks-after-commit"):
        session.info["webhooks-after-commit"] = True
        engine = session.get_bind()
        sqlalchemy_event.listen(session, "after_commit", lambda _: _send_quietly(engine), once=True)


def _send_quietly(engine: Any) -> None:
    """Send what is due right after a commit; a failure here never undoes the change."""
    try:
        deliver(engine)
    except Exception as exc:  # the outbox keeps them; serve retries
        log.warning("webhook delivery deferred: %s", exc)


def deliver(engine: Engine, *, webhook: int | None = None, limit: int = 50) -> list[Delivery]:
    """Send the deliveries that are due (of one ``webhook``, or all) and record each
    attempt; returns what happened to each."""
    import httpx

    now = time.time()
    due = (DeliveryRow.delivered_at.is_(None), DeliveryRow.next_attempt_at <= now)
    with read_session(engine) as session:  # most calls find nothing: no write lock for that
        if session.scalar(select(DeliveryRow.id).where(*due).limit(1)) is None:
            return []
    claimed: list[tuple[int, int, str, str, str, str]] = []
    with write_session(engine) as session, session.begin():
        query = (
            select(DeliveryRow, WebhookRow)
            .join(WebhookRow, DeliveryRow.webhook_id == WebhookRow.id)
            .where(*due)
            .order_by(DeliveryRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=DeliveryRow)
        )
        if webhook is not None:
            query = query.where(DeliveryRow.webhook_id == webhook)
        for row, hook in session.execute(query).all():
            row.next_attempt_at = now + LEASE_S  # leased: nobody else sends it meanwhile
            claimed.append((row.id, hook.id, hook.url, hook.secret, row.event, row.body))
    results = []
    with httpx.Client(timeout=TIMEOUT_S) as client:  # one connection pool for the batch
        for delivery_id, hook_id, url, secret, kind, body in claimed:
            status, error = None, None
            data = body.encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "modelcrate-webhooks",
                "X-Modelcrate-Event": kind,
                "X-Modelcrate-Delivery": str(delivery_id),
                "X-Modelcrate-Signature": sign(secret, data, int(time.time())),
            }
            try:
                response = client.post(url, content=data, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            results.append(Delivery(delivery_id, hook_id, kind, status, error, error is None))
    if results:
        _record(engine, results)
    return results


def _record(engine: Engine, results: list[Delivery]) -> None:
    now = time.time()
    with write_session(engine) as session, session.begin():
        for result in results:
            row = session.get(DeliveryRow, result.id)
            if row is None:  # the hook was removed meanwhile
                continue
            row.attempts += 1
            row.last_status, row.last_error = result.status, result.error
            if result.delivered:
                row.delivered_at = now
            else:
                row.next_attempt_at = now + min(2.0 ** (row.attempts - 1), MAX_BACKOFF_S)
