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
    blobs_removed: int
    bytes_freed: int


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    name: str | None
    version: str | None
    digest: str | None
    detail: str
