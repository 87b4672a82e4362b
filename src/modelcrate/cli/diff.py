"""``diff``: what changed between two versions, as tables or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from modelcrate.cli.options import json_option, registry_option
from modelcrate.cli.output import console, errors, print_json
from modelcrate.display import human_size

if TYPE_CHECKING:
    from modelcrate.diff import CrateDiff

SHOWN_TENSORS = 20


def register(group: click.Group) -> None:
    group.add_command(diff_command)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@registry_option
@json_option
def diff_command(a: str, b: str, registry: str | None, as_json: bool) -> None:
    """Signature (breaking or not), files, weights, metrics, lineage and provenance of B vs A.

    A (the old version) and B (the new) are each a reference, a .crate file or a directory."""
    from modelcrate.diff import diff

    with errors.status(f"comparing {a} and {b}…"):
        result = diff(a, b, registry=registry)
    if as_json:
        print_json(result.to_dict())
        return
    render(result)


def render(result: CrateDiff) -> None:
    console.print(f"[bold]{escape(result.a)}[/bold] → [bold]{escape(result.b)}[/bold]")
    if result.identical:
        console.print("identical (same digest)")
        return
    _signature(result)
    files = result.files
    console.print(
        f"files: {len(files['added'])} added, {len(files['removed'])} removed, "
        f"{len(files['changed'])} changed, {files['unchanged']} unchanged "
        f"({human_size(files['size_a'])} → {human_size(files['size_b'])})"
    )
    for kind in ("added", "removed", "changed"):
        for path in files[kind]:
            console.print(f"  {kind} {escape(path)}")
    _tensors(result)
    if result.labels:
        labels = result.labels
        console.print(
            f"labels: {labels['a']} → {labels['b']}, {len(labels['changed'])} renamed in place"
        )
    _figures("metrics", result)
    _figures("parity", result)
    _lineage(result)
    _provenance(result)


def _signature(result: CrateDiff) -> None:
    if not result.signature:
        console.print("signature: unchanged")
        return
    verdict = "[red]BREAKING[/red]" if result.breaking else "compatible"
    table = Table(title=f"signature: {verdict} for clients of {escape(result.a)}")
    for column in ("", "change", "before", "after", "for old clients"):
        table.add_column(column)
    for change in result.signature:
        table.add_row(
            f"{change.side} {escape(change.name)}",
            change.change,
            escape(change.before or ""),
            escape(change.after or ""),
            "[red]breaking[/red]" if change.breaking else "compatible",
        )
    console.print(table)


def _tensors(result: CrateDiff) -> None:
    tensors = result.tensors
    if tensors.format is None or tensors.identical or tensors.note:
        console.print(f"weights: {tensors.note}")
        return
    console.print(
        f"weights ({tensors.format}): {tensors.compared} tensors in both, "
        f"{len(tensors.changes)} changed, {tensors.unchanged} unchanged, "
        f"{len(tensors.only_a)} only in {escape(result.a)}, "
        f"{len(tensors.only_b)} only in {escape(result.b)}"
    )
    if not tensors.changes:
        return
    table = Table()
    for column in ("tensor", "change", "shape", "max abs delta", "elements changed"):
        table.add_column(column)
    ranked = sorted(tensors.changes, key=lambda c: -(c.max_abs_delta or float("inf")))
    for change in ranked[:SHOWN_TENSORS]:
        shape = str(change.shape_a)
        if change.change != "values":
            shape = f"{change.shape_a} {change.dtype_a} → {change.shape_b} {change.dtype_b}"
        table.add_row(
            escape(change.name),
            change.change,
            shape,
            "" if change.max_abs_delta is None else f"{change.max_abs_delta:.3g}",
            "" if change.changed_fraction is None else f"{change.changed_fraction:.1%}",
        )
    console.print(table)
    if len(ranked) > SHOWN_TENSORS:
        console.print(f"  … {len(ranked) - SHOWN_TENSORS} more (--json lists all)")


def _figures(kind: str, result: CrateDiff) -> None:
    deltas = result.metrics if kind == "metrics" else result.parity
    changed = [d for d in deltas if d.a != d.b]
    if not changed:
        return
    table = Table(title=kind)
    for column in ("", escape(result.a), escape(result.b), "change"):
        table.add_column(column)
    for delta in changed:
        cells = ["–" if x is None else f"{x:.4g}" for x in (delta.a, delta.b)]
        change = "" if delta.change is None else f"{delta.change:+.4g}"
        table.add_row(escape(delta.name), *cells, change)
    console.print(table)


def _lineage(result: CrateDiff) -> None:
    lineage = result.lineage
    if lineage["b_derives_from_a"]:
        console.print(
            f"lineage: {escape(result.b)} derives from {escape(result.a)} "
            f"({lineage['b']['operation'] or 'unnamed operation'})"
        )
    elif lineage["a_derives_from_b"]:
        console.print(f"lineage: {escape(result.a)} derives from {escape(result.b)}")
    elif lineage["a"] != lineage["b"]:
        for side in ("a", "b"):
            parents = ", ".join(lineage[side]["parents"]) or "none"
            console.print(f"lineage {side}: {lineage[side]['operation'] or '–'}; parents {parents}")


def _provenance(result: CrateDiff) -> None:
    provenance = result.provenance
    if provenance["a"] is None and provenance["b"] is None:
        console.print("provenance: recorded for neither")
        return
    if not provenance["changed"]:
        console.print("provenance: the same")
        return
    table = Table(title="provenance")
    for column in ("", escape(result.a), escape(result.b)):
        table.add_column(column)
    for key, values in provenance["changed"].items():
        table.add_row(key, escape(_short(values["a"])), escape(_short(values["b"])))
    console.print(table)


def _short(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value[:10]) + (" …" if len(value) > 10 else "")
    return "–" if value is None else str(value)
