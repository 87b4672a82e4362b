"""Whether a new signature still serves the clients of an old one.

A client of the old version sends every input it names, with its dtype and shape, and
reads the outputs it names. So, for the clients of ``old``:

- breaking: an input or output removed or renamed, an input added (old clients do not send
  it), a dtype changed, a rank changed, a fixed dimension changed to another size, an
  input's dynamic dimension fixed (clients may send other sizes), an output's fixed
  dimension made dynamic (clients may rely on its size);
- compatible: an output added, an input's fixed dimension made dynamic (it accepts more),
  an output's dynamic dimension fixed (it returns a case clients already handle).

Alias moves are checked with this (``Registry.set_alias``), and ``modelcrate diff`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelcrate.errors import BreakingChange
from modelcrate.manifest import Manifest, Signature, TensorSpec

Side = Literal["input", "output"]


@dataclass(frozen=True)
class SignatureChange:
    """One difference between two signatures, and whether it breaks old clients."""

    side: Side
    name: str
    change: str  # "removed", "added", "renamed", "dtype", "shape"
    before: str | None
    after: str | None
    breaking: bool

    def describe(self) -> str:
        if self.change == "renamed":
            return f"{self.side} {self.name!r} renamed to {self.after!r}"
        if self.change in ("removed", "added"):
            return f"{self.side} {self.name!r} {self.change}"
        return f"{self.side} {self.name!r} {self.change} {self.before} -> {self.after}"


def signature_changes(old: Signature, new: Signature) -> list[SignatureChange]:
    """Every input and output change from ``old`` to ``new``, in signature order."""
    return [
        *_side_changes("input", old.inputs, new.inputs),
        *_side_changes("output", old.outputs, new.outputs),
    ]


def breaking_changes(old: Signature, new: Signature) -> list[SignatureChange]:
    return [c for c in signature_changes(old, new) if c.breaking]


def _side_changes(
    side: Side, old: list[TensorSpec], new: list[TensorSpec]
) -> list[SignatureChange]:
    before = {spec.name: spec for spec in old}
    after = {spec.name: spec for spec in new}
    gone = [spec for spec in old if spec.name not in after]
    came = [spec for spec in new if spec.name not in before]
    changes: list[SignatureChange] = []
    # A name that left and one that arrived at the same position, with the same dtype and
    # shape, is one rename (still breaking: clients send or read by name).
    renamed = {
        spec.name: old_spec.name
        for spec in came
        for old_spec in gone
        if new.index(spec) == old.index(old_spec)
        and (spec.dtype, spec.shape) == (old_spec.dtype, old_spec.shape)
    }
    for spec in gone:
        if spec.name in renamed.values():
            target = next(k for k, v in renamed.items() if v == spec.name)
            changes.append(SignatureChange(side, spec.name, "renamed", spec.name, target, True))
        else:
            changes.append(SignatureChange(side, spec.name, "removed", spec.describe(), None, True))
    for spec in came:
        if spec.name not in renamed:
            breaking = side == "input"  # old clients do not send a new input
            changes.append(
                SignatureChange(side, spec.name, "added", None, spec.describe(), breaking)
            )
    for spec in old:
        if spec.name in after:
            changes.extend(_spec_changes(side, spec, after[spec.name]))
    return changes


def _spec_changes(side: Side, old: TensorSpec, new: TensorSpec) -> list[SignatureChange]:
    changes = []
    if old.dtype != new.dtype:
        changes.append(SignatureChange(side, old.name, "dtype", old.dtype, new.dtype, True))
    if old.shape != new.shape:
        breaking = len(old.shape) != len(new.shape) or any(
            _dimension_breaks(side, a, b) for a, b in zip(old.shape, new.shape, strict=True)
        )
        changes.append(
            SignatureChange(side, old.name, "shape", str(old.shape), str(new.shape), breaking)
        )
    return changes


def _dimension_breaks(side: Side, old: int, new: int) -> bool:
    if old == new:
        return False
    if side == "input":
        return new != -1  # widening a fixed input dimension to dynamic accepts more
    return old != -1  # narrowing a dynamic output dimension to fixed returns a known case


def check_move(where: str, current: Manifest, target: Manifest, allow_breaking: bool) -> str:
    """Refuse moving alias ``where`` from ``current`` to ``target`` when that breaks the
    current target's clients, unless ``allow_breaking``: then return the note the audit
    log keeps ('' for a compatible move)."""
    breaking = breaking_changes(current.signature, target.signature)
    if not breaking:
        return ""
    listed = "; ".join(change.describe() for change in breaking)
    if not allow_breaking:
        raise BreakingChange(
            f"{where}: {target.version} breaks the signature of {current.version}, which "
            f"{where} points to now: {listed}. Clients of {current.version} would fail; pass "
            "--allow-breaking (allow_breaking=True) to move it anyway"
        )
    return f" (breaking, allowed: {listed})"
