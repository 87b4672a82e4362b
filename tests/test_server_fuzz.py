"""Schemathesis against the server's own OpenAPI document: no input gives a 5xx, every status
is documented, and no error body leaks a filesystem path."""

from __future__ import annotations

from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Server
from modelcrate.server.app import openapi_document

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_request_makes_the_server_fail(served_digits: Server) -> None:
    """Every operation of the document, fuzzed (schemathesis' pytest plugin does not run on
    pytest 9 yet, so the operations are driven through hypothesis directly)."""
    schema = schemathesis.openapi.from_url(f"{served_digits.url}/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            if response.status_code >= 400:
                text = response.text
                assert "/tmp" not in text and str(Path.home()) not in text, text
                assert "Traceback" not in text

        call()
    assert served_digits.proc.poll() is None
    assert httpx.get(f"{served_digits.url}/v2/health/ready", timeout=5).status_code == 200


def test_every_documented_operation_exists(served_digits: Server) -> None:
    document = httpx.get(f"{served_digits.url}/v2/openapi.json", timeout=5).json()
    assert document == openapi_document()
    for path, operations in document["paths"].items():
        url = served_digits.url + path.format(
            name="digits",
            version="1.0.0",
            alias="prod",
            action="set",
            sha256="0" * 64,
            digest="sha256:" + "0" * 64,
        )
        for method in operations:
            body = {} if method in ("post", "put") else None
            response = httpx.request(method, url, timeout=10, json=body)
            assert response.status_code != 405, (method, path)
            if response.status_code == 404 and method != "head":  # our 404, not the router's
                assert "error" in response.json(), (method, path)
