"""Runs a pipeline or ensemble crate: its members, fetched by digest, each on its own runtime.

Members come from a crate source (the registry the composition was loaded from), so
a signing policy and a decryption identity apply to each member as they apply to the
composition itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from modelcrate.refs import Ref, parse_ref
from modelcrate.trust.crypto import unlock

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Manifest
    from modelcrate.runtimes import Runtime
    from modelcrate.trust.signing import Policy


class CrateSource(Protocol):
    """Where members come from: any registry (embedded, shared or over HTTP)."""

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate: ...


def member_crates(
    manifest: Manifest, source: CrateSource, trust: Policy | None, identity: str | None
) -> list[tuple[list[str], Crate]]:
    """Each member's input names and crate, fetched by digest (checked against ``trust``)
    and decrypted with ``identity`` (else ``$MODELCRATE_PASSPHRASE``) when encrypted."""
    assert manifest.composition is not None
    found = []
    for member in manifest.composition.members:
        crate = source.get(Ref(parse_ref(member.ref).name, digest=member.digest), trust=trust)
        found.append(([s.name for s in crate.manifest.signature.inputs], unlock(crate, identity)))
    return found


class CompositionRuntime:
    """Runs a composition's members in-process, each on its own runtime (``make_runtime``
    builds them: members that are not thread-safe are serialized there)."""

    name = "composition"
    thread_safe = True

    def __init__(self, manifest: Manifest, members: list[tuple[list[str], Runtime]]) -> None:
        assert manifest.composition is not None
        self.composition = manifest.composition
        self.output_names = [s.name for s in manifest.signature.outputs]
        self.members = members

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.composition.kind == "pipeline":
            values = list(inputs.values())
            for names, runtime in self.members:
                values = list(runtime.run(dict(zip(names, values, strict=True))).values())
            return dict(zip(self.output_names, values, strict=True))
        outputs = []
        for names, runtime in self.members:
            fed = dict(zip(names, inputs.values(), strict=True))
            outputs.append(list(runtime.run(fed).values()))
        combined = []
        for position in range(len(self.output_names)):
            stack = np.stack([out[position] for out in outputs])
            if self.composition.combine == "vote":
                votes = np.argmax(stack, axis=-1)  # [members, batch]
                classes = stack.shape[-1]
                stack = (votes[..., None] == np.arange(classes)).astype(np.float32)
            combined.append(stack.mean(axis=0).astype(stack.dtype, copy=False))
        return dict(zip(self.output_names, combined, strict=True))
