"""The served OpenAPI document is valid OpenAPI 3, and it and the gateway's routes agree: every
route served is documented, every documented route is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from syncfab.gateway.app import create_router

SPEC = Path(__file__).resolve().parents[2] / "gateway" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch"}


def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def test_the_document_is_valid_openapi_3() -> None:
    validate(spec())  # raises, naming the error, if not


def test_every_route_is_documented_and_every_documented_route_is_served() -> None:
    served = {(method.lower(), path) for method, path in create_router().routes()}
    documented = {(m, path) for path, item in spec()["paths"].items() for m in item if m in METHODS}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
