"""Provenance at pack: the Git commit, branch, remote and uncommitted files of the code
that made a model, the command that ran, and the environment.

Git is asked with git itself (``git rev-parse``, ``git status``), read-only
(``GIT_OPTIONAL_LOCKS=0``: no index refresh is written). Outside a work tree, or
without git installed, nothing is recorded. What could carry a secret never reaches
the manifest: credentials in URLs are removed, and values of options named like a
token, password, passphrase or secret are replaced by ``***``.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from modelcrate.errors import UsageError
from modelcrate.manifest import MAX_CHANGED_FILES, GitSource, Provenance

PACKAGES = (
    "modelcrate",
    "numpy",
    "onnx",
    "onnxruntime",
    "safetensors",
    "torch",
    "tensorflow",
    "keras",
    "tf2onnx",
    "ai-edge-litert",
    "scikit-learn",
)
SECRET_OPTION = re.compile(r"^--?[\w-]*(token|password|passphrase|secret)[\w-]*$", re.I)
URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
GIT_TIMEOUT_S = 10


def collect(source_dir: str | os.PathLike[str] | None = None) -> Provenance | None:
    """The provenance of a crate packed now from ``source_dir`` (default: the working
    directory); None when that is not inside a Git work tree (or git is not installed)."""
    directory = Path(os.getcwd() if source_dir is None else source_dir)
    if not directory.is_dir():
        raise UsageError(f"{directory}: the source directory does not exist")
    source = git_source(directory)
    if source is None:
        return None
    return Provenance(
        source=source,
        command=command_line(sys.argv),
        python=platform.python_version(),
        platform=platform.platform(),
        packages=_installed(PACKAGES),
    )


def git_source(directory: Path) -> GitSource | None:
    """What Git says about the work tree holding ``directory``; None outside one."""
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    status = _git(directory, "status", "--porcelain=v1", "-z", "--untracked-files=no") or ""
    changed = _changed_files(status)
    relative = os.path.relpath(directory.resolve(), Path(top).resolve())
    return GitSource(
        remote=_remote(directory),
        commit=_git(directory, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"),
        branch=_git(directory, "symbolic-ref", "--quiet", "--short", "HEAD"),
        path="" if relative == "." else Path(relative).as_posix(),
        dirty=bool(changed),
        changed_files=changed[:MAX_CHANGED_FILES],
        changed_count=len(changed),
    )


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed (scp-like ``git@host:repo`` is kept:
    it names an SSH user, not a secret)."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    return url


def command_line(argv: list[str]) -> str | None:
    """``argv`` as one shell line, program path shortened to its name, secrets redacted."""
    if not argv:
        return None
    program = Path(argv[0])
    if program.name == "__main__.py":  # python -m package
        words = ["python", "-m", program.parent.name]
    else:
        words = [program.name if program.is_absolute() else argv[0]]
    hide_next = False
    for word in argv[1:]:
        option, equals, _ = word.partition("=")
        if hide_next:
            word, hide_next = "***", False
        elif SECRET_OPTION.match(option):
            if equals:
                word = f"{option}=***"
            else:
                hide_next = True
        words.append(URL_CREDENTIALS.sub(r"\1", word))
    return shlex.join(words)[:4096]


def _git(directory: Path, *args: str) -> str | None:
    """One git command's output (stripped), or None when it fails or git is missing."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    output = done.stdout.strip("\n") if args[0] == "status" else done.stdout.strip()
    return output if done.returncode == 0 and output else None


def _remote(directory: Path) -> str | None:
    names = (_git(directory, "remote") or "").split()
    if not names:
        return None
    name = "origin" if "origin" in names else names[0]
    url = _git(directory, "remote", "get-url", name)
    return without_credentials(url) if url else None


def _changed_files(status: str) -> list[str]:
    """Paths from ``git status --porcelain -z``: ``XY path``, and renames add the old path
    as the next entry (skipped: the new name is the file that differs)."""
    entries = status.split("\0")
    files, skip = [], False
    for entry in entries:
        if skip or len(entry) < 4:
            skip = False
            continue
        code, path = entry[:2], entry[3:]
        skip = "R" in code or "C" in code
        files.append(path)
    return sorted(files)


def _installed(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            continue
    return found
