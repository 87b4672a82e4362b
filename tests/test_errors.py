"""One mapping between errors and HTTP: every error class has a stable code and status; a
server answers with both, and the client and the remote registry raise the same class the
server raised. Connection failures name the URL."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, free_port
from modelcrate import errors
from modelcrate.registry.remote import RemoteRegistry


def every_error_class() -> list[type[errors.ModelcrateError]]:
    found, pending = [], [errors.ModelcrateError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
def test_every_error_class_survives_a_round_trip_over_http(
    cls: type[errors.ModelcrateError],
) -> None:
    sent = cls("something was wrong")
    back = errors.from_http(sent.http_status, errors.error_body(sent), "http://h")
    assert type(back) is cls and "something was wrong" in str(back)
    assert back.code == sent.code and back.http_status == sent.http_status


def test_codes_are_unique_and_statuses_are_http() -> None:
    classes = every_error_class()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(400 <= cls.http_status < 600 for cls in classes)


def test_answers_from_other_servers_map_by_status() -> None:
    assert isinstance(errors.from_http(404, {"error": "gone"}, "u"), mc.NotFound)
    refused = errors.from_http(413, "not json", "u")
    assert isinstance(refused, mc.RequestRefused) and refused.http_status == 413
    assert refused.code == "too_large"
    assert isinstance(errors.from_http(502, None, "u"), mc.ServerError)


def test_server_errors_carry_codes_and_clients_raise_the_same_classes(
    served_digits: Server,
) -> None:
    url = served_digits.url
    tensor = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    answer = httpx.post(url + "/v2/models/nope/infer", json={"inputs": [tensor]})
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    bad = httpx.post(url + "/v2/models/digits/infer", json={"inputs": []})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_input"
    typed = httpx.post(
        url + "/ui/api/models/digits/1.0.0/predict",
        content=b"{}",
        headers={"Content-Type": "text/plain"},
    )
    assert typed.status_code == 415 and typed.json()["code"] == "unsupported_media_type"
    for ragged in ({"x": [[None], -5e-324]}, [[1.0], 2.0]):  # found by the fuzz test: was 500
        tried = httpx.post(url + "/ui/api/models/digits/1.0.0/predict", json={"inputs": ragged})
        assert tried.status_code == 400 and "not an array" in tried.json()["error"], tried.text
    with mc.Client(url) as client:
        with pytest.raises(mc.NotFound, match="not served here"):
            client.predict("nope", np.zeros((1, 1, 8, 8), np.float32))
        with pytest.raises(mc.InputError, match="expected shape"):
            client.predict("digits", np.zeros((1, 64), np.float32))
    with RemoteRegistry(url) as registry:
        with pytest.raises(mc.NotFound):
            registry.resolve("digits@9.9.9")
        with pytest.raises(mc.Forbidden, match="need a token"):
            registry.set_alias("digits", "prod", "1.1.0")


def test_connection_failures_name_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with mc.Client(url, timeout=2) as client, pytest.raises(mc.ServerError, match=url):
        client.predict("digits", np.zeros((1, 4), np.float32))
    with RemoteRegistry(url, timeout=2) as registry, pytest.raises(mc.RegistryError, match=url):
        registry.resolve("digits@prod")
