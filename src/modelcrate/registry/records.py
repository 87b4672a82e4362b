"""What registry operations return: plain, frozen records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    digest: str
    size: int
    created_at: float
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    digest: str
    created: bool  # False when the identical version was already there


@dataclass(frozen=True)
class ModelSummary:
    name: str
    latest: str
    versions: int
    aliases: dict[str, str]
    tags: list[str]
    description: str


@dataclass(frozen=True)
class AliasEvent:
    alias: str
    action: str
    version: str | None
    previous: str | None
    at: float


@dataclass(frozen=True)
class FileCheck:
    path: str
    size: int
    problem: str | None  # None when the blob is intact


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int  # chunks (and loose blobs of earlier releases) freed
    bytes_freed: int
    packs_rewritten: int = 0  # mostly-dead or small packs copied into new ones
    packs_removed: int = 0  # packs with nothing live left

    def describe(self) -> str:
        return (
            f"{self.blobs_removed} chunks, {self.bytes_freed} bytes; "
            f"{self.packs_rewritten} packs rewritten, {self.packs_removed} removed"
        )


@dataclass(frozen=True)
class PackCheck:
    pack: str
    problem: str
    versions: list[str]  # name@version of every version holding a chunk of the pack


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    name: str | None
    version: str | None
    digest: str | None
    detail: str


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    events: list[str]
    created_at: float
    created_by: str
    pending: int  # deliveries not sent yet
    last_event: str | None  # the latest attempt: its event, HTTP status, error, success
    last_status: int | None
    last_error: str | None
    last_delivered: bool | None


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook: int
    event: str
    status: int | None  # the receiver's HTTP status (None: no answer)
    error: str | None
    delivered: bool


@dataclass(frozen=True)
class Evaluation:
    name: str
    version: str
    digest: str
    at: float
    actor: str
    data: str  # sha256 fingerprint of the inputs and labels
    samples: int
    metrics: dict[str, float]  # accuracy (with labels), latency_ms_p50, latency_ms_p99, ...

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Rollout:
    """A rollout's recorded state. ``state``: running, promoted, rolled_back or aborted;
    ``figures``: per version, what the servers measured (requests, errors, error_rate,
    p99_ms, disagreement, compared) when it was last updated."""

    id: int
    name: str
    alias: str
    stable: str
    candidate: str
    mode: str
    steps: list[int]
    step: int
    weight: int  # percent of the alias's requests the candidate answers (0 in shadow mode)
    interval_s: float
    slos: dict[str, float]
    state: str
    started_at: float
    step_started_at: float
    ended_at: float | None
    reason: str
    figures: dict[str, dict[str, float]]
    started_by: str
