"""Tokens and scopes; loopback by default; admin routes never open; no loading from URLs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import modelcrate as mc
from conftest import Server, free_port

READER = "reader-token-0123456789"
ADMIN = "admin-token-0123456789abc"
BODY = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}


@pytest.fixture
def secured(tmp_path: Path, digits_crate_path: Path, start_server: Callable[..., Server]) -> Server:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.set_alias("digits", "prod", "1.0.0")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "reader"\ntoken = "{READER}"\nscopes = ["infer", "read"]\n\n'
        f'[[tokens]]\nname = "ops"\nsha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"\n'
        'scopes = ["infer", "read", "admin"]\n'
    )
    return start_server(registry.root, "digits@prod", "--token-file", str(tokens))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_scopes_are_enforced(secured: Server) -> None:
    url = secured.url
    assert httpx.get(url + "/v2/health/ready").status_code == 200  # health stays open
    assert httpx.post(url + "/v2/models/digits/infer", json=BODY).status_code == 401
    wrong = httpx.post(url + "/v2/models/digits/infer", json=BODY, headers=auth("nope" * 5))
    assert wrong.status_code == 401
    assert (
        httpx.post(url + "/v2/models/digits/infer", json=BODY, headers=auth(READER)).status_code
        == 200
    )
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/metrics", headers=auth(READER)).status_code == 200
    unload = url + "/v2/repository/models/digits/unload"
    assert httpx.post(unload, headers=auth(READER)).status_code == 403
    assert httpx.post(unload, headers=auth(ADMIN)).status_code == 200
    time.sleep(0.5)  # several watcher rounds: an unloaded model stays unloaded
    assert httpx.get(url + "/v2/health/ready").status_code == 400
    load = httpx.post(url + "/v2/repository/models/digits/load", headers=auth(ADMIN))
    assert load.status_code == 200 and load.json()["state"] == "READY"
    with mc.Client(url, token=READER) as client:
        assert client.predict("digits@prod", BODY_ARRAY)["output"].shape == (1, 10)


BODY_ARRAY = __import__("numpy").zeros((1, 1, 8, 8), "float32")


@pytest.mark.parametrize(
    "ref",
    [
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "../../etc/passwd",
        "digits/../../x",
    ],
    ids=["metadata-url", "file-url", "traversal", "slash"],
)
def test_load_never_takes_urls_or_paths(secured: Server, ref: str) -> None:
    response = httpx.post(
        secured.url + "/v2/repository/models/digits/load",
        json={"parameters": {"ref": ref}},
        headers=auth(ADMIN),
    )
    assert response.status_code == 400
    assert "never loads from URLs or paths" in response.json()["error"]


def test_admin_routes_are_closed_without_a_token_file(served_digits: Server) -> None:
    response = httpx.post(served_digits.url + "/v2/repository/models/digits/unload")
    assert response.status_code == 403 and "--token-file" in response.json()["error"]
    assert httpx.get(served_digits.url + "/v2/health/ready").status_code == 200


def test_refuses_a_public_interface_without_tokens(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelcrate",
            "serve",
            "digits@prod",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--registry",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without --token-file" in result.stderr


def test_bad_token_file_is_a_clear_error(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\ntoken = "short"\nscopes = ["infer"]\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelcrate",
            "serve",
            "digits@prod",
            "--token-file",
            str(tokens),
            "--port",
            str(free_port()),
            "--registry",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "at least 16 characters" in result.stderr
