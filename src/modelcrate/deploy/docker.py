"""A Docker build context that serves one crate with ``modelcrate serve``.

The crate is baked in (``model.crate``, published into the image's own registry at
build time, so a corrupted copy fails the build, not the first request). The
image installs only what the crate needs to run (ONNX Runtime through
modelcrate; torch only for a crate without an ONNX artifact), runs as a
non-root user, listens on 8080 and checks ``/v2/health/ready``. Tokens come
from ``/run/secrets/modelcrate-tokens.toml`` (mount one); without it the
server refuses to listen beyond loopback, unless ``MODELCRATE_INSECURE=1`` says
the platform authenticates in front of it.
"""

from __future__ import annotations

from pathlib import Path

from modelcrate.crate import Crate

PYTHON_IMAGE = "python:3.11-slim-bookworm"
PORT = 8080

DOCKERFILE = """\
# syntax=docker/dockerfile:1
# Serves {ref} ({digest}) over the Open Inference Protocol v2.
FROM {python}

ARG MODELCRATE_SPEC="modelcrate{extras}=={version}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\
    MODELCRATE_HOME=/srv/modelcrate
RUN pip install --no-compile "$MODELCRATE_SPEC" \\
    && useradd --system --uid 10001 --home-dir /srv modelcrate \\
    && mkdir -p /srv/modelcrate && chown 10001:10001 /srv /srv/modelcrate

COPY --chown=10001:10001 model.crate /srv/model.crate
COPY --chown=10001:10001 entrypoint.sh healthcheck.py /srv/
USER 10001
# Publishing verifies every file of the crate: a damaged copy fails the build.
RUN modelcrate publish /srv/model.crate && rm /srv/model.crate

EXPOSE {port}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
    CMD ["python", "/srv/healthcheck.py"]
ENTRYPOINT ["/bin/sh", "/srv/entrypoint.sh"]
CMD ["{ref}"]
"""

ENTRYPOINT = """\
#!/bin/sh
# Serve the baked-in crate; tokens from a mounted secret, or an explicit opt-out.
set -eu
tokens=/run/secrets/modelcrate-tokens.toml
if [ -f "$tokens" ]; then
  exec modelcrate serve "$@" --host 0.0.0.0 --port {port} --token-file "$tokens"
elif [ "${{MODELCRATE_INSECURE:-0}}" = "1" ]; then
  exec modelcrate serve "$@" --host 0.0.0.0 --port {port} --insecure
else
  echo "mount a token file at $tokens, or set MODELCRATE_INSECURE=1" >&2
  exit 2
fi
"""

HEALTHCHECK = """\
import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
"""

DOCKERIGNORE = "*\n!model.crate\n!entrypoint.sh\n!healthcheck.py\n"


def export(crate: Crate, target: Path, *, image: str | None = None) -> list[Path]:
    from modelcrate import __version__

    manifest = crate.manifest
    needs_torch = manifest.artifact("onnx") is None and manifest.artifact("ort") is None
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "Dockerfile": DOCKERFILE.format(
            ref=manifest.ref,
            digest=manifest.digest,
            python=PYTHON_IMAGE,
            port=PORT,
            version=__version__,
            extras="[torch]" if needs_torch else "",
        ),
        "entrypoint.sh": ENTRYPOINT.format(port=PORT),
        "healthcheck.py": HEALTHCHECK.format(port=PORT),
        ".dockerignore": DOCKERIGNORE,
    }
    written = []
    for name, text in files.items():
        (target / name).write_text(text)
        written.append(target / name)
    written.append(crate.save(target / "model.crate"))
    return written


def image_name(name: str, version: str) -> str:
    """The default image tag for a crate (tags allow [A-Za-z0-9_.-], 128 chars)."""
    tag = "".join(c if c.isalnum() or c in "_.-" else "-" for c in version)[:128]
    return f"modelcrate-{name}:{tag}"
