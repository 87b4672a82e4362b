"""Pipelines and ensembles: crates made of other crates, pinned by digest.

A composition crate holds no model files: its manifest lists the member crates
by digest (an alias may move; a digest never does) and the signature the
composition exposes. Signatures are checked when it is built, so a pipeline
whose stage outputs do not fit the next stage's inputs is refused then, not at
the first request. At run time the members are loaded from the registry (its
signing policy applies to each) and run in-process, in ``load`` and in the
server alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from modelcrate.crate import Crate, DirectorySource, temporary_directory
from modelcrate.errors import UsageError
from modelcrate.manifest import (
    Composition,
    Lineage,
    Manifest,
    Member,
    Parent,
    Signature,
    TensorSpec,
)
from modelcrate.refs import check_name, check_version
from modelcrate.registry import ModelRegistry, as_registry

if TYPE_CHECKING:
    pass

Combine = Literal["mean", "vote"]


def pipeline(
    *refs: str,
    name: str,
    version: str,
    description: str = "",
    registry: ModelRegistry | str | None = None,
) -> Crate:
    """A crate that runs ``refs`` in sequence: each one's outputs are the next one's inputs."""
    if len(refs) < 2:
        raise UsageError("a pipeline needs at least two crates")
    members = _resolve(refs, registry)
    for (a_ref, a), (b_ref, b) in itertools.pairwise(members):
        _check_fit(a.signature.outputs, b.signature.inputs, f"{a_ref} outputs", f"{b_ref} inputs")
    first, last = members[0][1], members[-1][1]
    signature = Signature(inputs=first.signature.inputs, outputs=last.signature.outputs)
    return _build("pipeline", members, None, name, version, signature, last.labels, description)


def ensemble(
    refs: Sequence[str],
    *,
    combine: Combine = "mean",
    name: str,
    version: str,
    description: str = "",
    registry: ModelRegistry | str | None = None,
) -> Crate:
    """A crate that runs every crate in ``refs`` on the same inputs and combines their
    outputs: ``mean`` (element-wise), or ``vote`` (per row, the share of members whose
    argmax picked each class)."""
    if combine not in ("mean", "vote"):
        raise UsageError(f"combine {combine!r}: expected mean or vote")
    if len(refs) < 2:
        raise UsageError("an ensemble needs at least two crates")
    members = _resolve(refs, registry)
    first_ref, first = members[0]
    for ref, manifest in members[1:]:
        _check_fit(first.signature.inputs, manifest.signature.inputs, first_ref, f"{ref} inputs")
        _check_fit(
            manifest.signature.outputs,
            first.signature.outputs,
            f"{ref} outputs",
            f"{first_ref} outputs",
        )
        if manifest.labels != first.labels:
            raise UsageError(f"{ref} has different labels from {first_ref}; votes would not match")
    if combine == "vote" and any(len(s.shape) != 2 for s in first.signature.outputs):
        raise UsageError("vote combines class scores: every output must be [batch, classes]")
    return _build(
        "ensemble", members, combine, name, version, first.signature, first.labels, description
    )


def _resolve(
    refs: Sequence[str], registry: ModelRegistry | str | None
) -> list[tuple[str, Manifest]]:

    reg = as_registry(registry)
    resolved = []
    for ref in refs:
        manifest = reg.manifest(ref)
        resolved.append((manifest.ref, manifest))
    return resolved


def _check_fit(
    produced: Sequence[TensorSpec], wanted: Sequence[TensorSpec], source: str, target: str
) -> None:
    """Refuse unless ``produced`` can be fed to ``wanted`` position by position."""
    if len(produced) != len(wanted):
        raise UsageError(f"{source} give {len(produced)} tensor(s) but {target} take {len(wanted)}")
    for have, want in zip(produced, wanted, strict=True):
        shapes_fit = len(have.shape) == len(want.shape) and all(
            a == b or -1 in (a, b) for a, b in zip(have.shape, want.shape, strict=True)
        )
        if have.dtype != want.dtype or not shapes_fit:
            raise UsageError(
                f"{source} {have.name!r} {have.describe()} does not fit "
                f"{target} {want.name!r} {want.describe()}"
            )


def _build(
    kind: Literal["pipeline", "ensemble"],
    members: list[tuple[str, Manifest]],
    combine: Combine | None,
    name: str,
    version: str,
    signature: Signature,
    labels: list[str] | None,
    description: str,
) -> Crate:
    check_name(name)
    check_version(version)
    pinned = [Member(digest=m.digest, ref=ref) for ref, m in members]
    manifest = Manifest(
        name=name,
        version=version,
        description=description or f"{kind} of " + ", ".join(ref for ref, _ in members),
        signature=signature,
        labels=labels,
        composition=Composition(kind=kind, members=pinned, combine=combine),
        lineage=Lineage(
            parents=[Parent(digest=m.digest, ref=m.ref) for m in pinned], operation=kind
        ),
    )
    source = DirectorySource(Path())
    source.root = temporary_directory(source, "modelcrate-compose-")
    return Crate(manifest, source)
