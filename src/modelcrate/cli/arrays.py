"""Arrays given on the command line as .npy/.npz files (never unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcrate.errors import InputError, UsageError

if TYPE_CHECKING:
    import numpy as np


def read_arrays(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """One array from an .npy, or arrays by name from an .npz."""
    import numpy as np

    if not path.is_file():
        raise UsageError(f"{path}: no such array file")
    try:
        # allow_pickle=False: a file holding Python objects is refused, never unpickled.
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path.name} is not a readable .npy/.npz array file: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    return np.asarray(loaded)
