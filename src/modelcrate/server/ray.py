"""``modelcrate serve --ray``: the same ASGI app as a Ray Serve deployment.

Each replica builds the app from the same settings (registry, models, batching,
tokens) and runs its lifespan, so it loads, warms up and follows aliases exactly
as a ``serve`` worker does. ``--replicas N`` fixes the count; ``--autoscale MIN:MAX``
lets Ray Serve scale on ongoing requests. The local Ray instance is started with
its dashboard off and its node address on loopback; Ray's internal ports use
Ray's token authentication (on by default since Ray 2.52). HTTP binds the host
``serve`` would, with the same refusal of a non-loopback host without tokens.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelcrate.errors import RuntimeUnavailable, UsageError

if TYPE_CHECKING:
    from modelcrate.server.runner import ServeSettings


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    min_replicas: int | None = None  # autoscaling when set
    max_replicas: int | None = None

    @classmethod
    def parse(cls, replicas: int, autoscale: str | None) -> Scaling:
        if autoscale is None:
            if replicas < 1:
                raise UsageError("--replicas must be at least 1")
            return cls(replicas)
        low, _, high = autoscale.partition(":")
        if not (low.isdigit() and high.isdigit()) or not 0 < int(low) <= int(high):
            raise UsageError(f"--autoscale {autoscale!r}: expected MIN:MAX, like 1:4")
        return cls(int(low), int(low), int(high))

    def options(self) -> dict[str, Any]:
        if self.min_replicas is None:
            return {"num_replicas": self.replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": 8,
            }
        }


def serve_with_ray(settings: ServeSettings, scaling: Scaling) -> None:
    """Run the server as a Ray Serve application until interrupted (blocking)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RuntimeUnavailable("--ray needs Ray Serve: pip install 'modelcrate[ray]'") from None

    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM shuts Ray down as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})

        def build() -> Any:
            from modelcrate.server.runner import build_app

            return build_app(settings)

        ingress = serve.ingress(build)(type("ModelcrateServer", (), {}))
        deployment = serve.deployment(name="modelcrate", **scaling.options())(ingress)
        serve.run(deployment.bind(), name="modelcrate", route_prefix="/", blocking=False)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
