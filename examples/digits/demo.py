"""The quick-start: train, pack, publish, alias, load, serve, predict over HTTP.

Uses the embedded registry at $MODELCRATE_HOME (default ~/.modelcrate).

    python examples/digits/demo.py [--port 8000] [--serve-seconds N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import modelcrate as mc

sys.path.insert(0, str(Path(__file__).parent))
from train import pack_digits, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--serve-seconds",
        type=float,
        default=None,
        help="stop serving after this long (default: until Ctrl-C)",
    )
    args = parser.parse_args()

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
    labels = loaded.labels or []
    predicted = [labels[i] for i in np.argmax(loaded.predict(x_test[:5])["output"], axis=1)]
    print(
        f"5. mc.load('digits@prod').predict(x_test[:5]) -> {predicted} "
        f"(true: {[str(v) for v in y_test[:5]]})"
    )
    serve(registry, args.port, x_test, y_test, args.serve_seconds)


def serve(
    registry: mc.Registry, port: int, x_test: np.ndarray, y_test: np.ndarray, seconds: float | None
) -> None:
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "modelcrate",
        "serve",
        "digits@prod",
        "--port",
        str(port),
        "--registry",
        str(registry.root),
    ]
    server = subprocess.Popen(command)
    try:
        client = mc.Client(url)
        deadline = time.monotonic() + 60
        while not _ready(client):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start (is port {port} free? try --port)")
            time.sleep(0.2)
        logits = client.predict("digits@prod", x_test[:5])["output"]
        print(f"6. serving digits@prod at {url}")
        print(
            f"   POST {url}/v2/models/digits/versions/prod/infer -> "
            f"{[int(i) for i in np.argmax(logits, axis=1)]} (true: {[int(v) for v in y_test[:5]]})"
        )
        print(f"   try: curl {url}/v2/models/digits")
        if seconds is None:
            print("   (Ctrl-C to stop)")
            server.wait()
        else:
            time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=15)


def _ready(client: mc.Client) -> bool:
    try:
        return client.ready()
    except Exception:  # not listening yet
        return False


if __name__ == "__main__":
    main()
