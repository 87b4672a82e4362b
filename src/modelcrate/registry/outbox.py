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

from modelcrate.registry.db import Database, Row, Transaction
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


def enqueue(tx: Transaction, action: str, payload: dict[str, Any]) -> None:
    """Queue the event ``action`` stands for (if any) for every hook subscribed to it, in
    the caller's transaction; they are sent once it commits."""
    kind = ACTION_EVENTS.get(action)
    if kind is None:
        return
    hooks = [h for h in tx.all("SELECT id, events FROM webhooks") if kind in h.events.split(",")]
    if hooks:
        queue(tx, [h.id for h in hooks], kind, {"action": action, **payload})


def queue(tx: Transaction, hooks: list[int], kind: str, payload: dict[str, Any]) -> None:
    """Add a delivery of one event to each of ``hooks`` (ids) in the caller's transaction."""
    now = time.time()
    body = json.dumps({"id": uuid.uuid4().hex, "event": kind, "at": now, **payload})
    for hook in hooks:
        tx.insert(
            "webhook_deliveries",
            webhook_id=hook,
            event=kind,
            body=body,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
            delivered_at=None,
            last_status=None,
            last_error=None,
        )
    if not tx.info.get("webhooks-after-commit"):
        tx.info["webhooks-after-commit"] = True
        tx.after_commit.append(lambda: _send_quietly(tx.database))


def _send_quietly(db: Database) -> None:
    """Send what is due right after a commit; a failure here never undoes the change."""
    try:
        deliver(db)
    except Exception as exc:  # the outbox keeps them; serve retries
        log.warning("webhook delivery deferred: %s", exc)


def deliver(db: Database, *, webhook: int | None = None, limit: int = 50) -> list[Delivery]:
    """Send the deliveries that are due (of one ``webhook``, or all) and record each
    attempt; returns what happened to each."""
    now = time.time()
    due = "d.delivered_at IS NULL AND d.next_attempt_at <= ?"
    with db.read() as tx:  # most calls find nothing: no write lock for that
        if tx.scalar(f"SELECT d.id FROM webhook_deliveries d WHERE {due} LIMIT 1", now) is None:
            return []
    # Imported once there is something to send: a server polls every second, and httpx
    # (with the rich and pygments its command line brings) took ~0.1 s of imports holding
    # the GIL a second after startup, while the server answered its first requests.
    import httpx

    claimed: list[tuple[int, int, str, str, str, str]] = []
    with db.write() as tx:
        query = (
            "SELECT d.id, d.event, d.body, h.id AS hook, h.url, h.secret "
            "FROM webhook_deliveries d JOIN webhooks h ON d.webhook_id = h.id "
            f"WHERE {due}" + (" AND d.webhook_id = ?" if webhook is not None else "")
        )
        params = (now,) if webhook is None else (now, webhook)
        rows: list[Row] = tx.all(
            f"{query} ORDER BY d.id LIMIT ?{tx.for_update('FOR UPDATE OF d SKIP LOCKED')}",
            *params,
            limit,
        )
        for row in rows:  # leased: nobody else sends it meanwhile
            tx.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                now + LEASE_S,
                row.id,
            )
            claimed.append((row.id, row.hook, row.url, row.secret, row.event, row.body))
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
        _record(db, results)
    return results


def _record(db: Database, results: list[Delivery]) -> None:
    now = time.time()
    with db.write() as tx:
        for result in results:
            attempts = tx.scalar("SELECT attempts FROM webhook_deliveries WHERE id = ?", result.id)
            if attempts is None:  # the hook was removed meanwhile
                continue
            attempts += 1
            delivered = now if result.delivered else None
            retry = None if result.delivered else now + min(2.0 ** (attempts - 1), MAX_BACKOFF_S)
            tx.execute(
                "UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, "
                "delivered_at = ?, next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ?",
                attempts,
                result.status,
                result.error,
                delivered,
                retry,
                result.id,
            )
