"""What a pack builder (one per source format) hands back to ``pack``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelcrate.manifest import Artifact, Framework, Signature


@dataclass
class Build:
    """What a builder produced in the work directory."""

    artifacts: list[Artifact]
    signature: Signature
    framework: Framework | None = None
    dependencies: dict[str, str] = field(default_factory=dict)
    samples: dict[str, np.ndarray] | None = None  # example inputs by input name
