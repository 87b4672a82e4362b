"""The quick-start: train, pack, publish, alias, load from the registry, predict.

Uses the embedded registry at $MODELCRATE_HOME (default ~/.modelcrate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import modelcrate as mc

sys.path.insert(0, str(Path(__file__).parent))
from train import pack_digits, train


def main() -> None:
    model, accuracy, x_test, y_test = train()
    print(f"1. trained the digits CNN (test accuracy {accuracy:.3f})")
    crate = pack_digits(model, accuracy)
    path = crate.save(Path(__file__).with_name("out") / "digits-1.0.0.crate")
    print(f"2. packed {crate.manifest.ref} -> {path}")
    registry = mc.Registry.open()
    result = registry.publish(path)
    print(f"3. published to {registry.root} ({'new' if result.created else 'already there'})")
    registry.set_alias("digits", "prod", "1.0.0")
    print("4. digits@prod -> 1.0.0")
    loaded = mc.load("digits@prod", registry=registry)
    logits = loaded.predict(x_test[:5])["output"]
    labels = loaded.labels or []
    predicted = [labels[i] for i in np.argmax(logits, axis=1)]
    print(
        f"5. mc.load('digits@prod').predict(x_test[:5]) -> {predicted} "
        f"(true: {[str(v) for v in y_test[:5]]})"
    )
    agreement = float((np.argmax(loaded.predict(x_test)["output"], 1) == y_test).mean())
    print(f"   accuracy of the loaded crate on the test split: {agreement:.3f}")


if __name__ == "__main__":
    main()
