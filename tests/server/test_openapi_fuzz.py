"""The OpenAPI schema documents every request body and error answer: a bounded schema-driven
fuzz run (schemathesis, a few hundred examples) against a real elf-serve gets no 5xx and no
answer that contradicts the schema."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from tests.server.live import LiveServer

pytestmark = pytest.mark.integration

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def test_schema_documents_bodies_and_errors(served: LiveServer) -> None:
    spec: dict[str, Any] = httpx.get(f"{served.url}/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    body = classify["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*"}
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"file", "files"}
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    json_body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert json_body == {"$ref": "#/components/schemas/InferenceRequest"}
    assert "InferParameters" in spec["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for op, codes in ((classify, "400 404 408 413 415 422 499 503 504"), (infer, "400 404 413")):
        for code in codes.split():
            assert op["responses"][code]["content"]["application/json"]["schema"] == error


def test_fuzz_gets_no_5xx_and_nothing_off_schema(served: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 14
    examples, seen = 0, Counter[tuple[str, int]]()

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,  # the same examples every run
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
            database=None,
        )
        def run(case: Any) -> None:
            nonlocal examples
            examples += 1
            if case.path_parameters and examples % 4:  # mostly the served model, at times not
                known = {"name": "tiny", "model_version": "0.0.1-test"}
                case.path_parameters = {k: known.get(k, v) for k, v in case.path_parameters.items()}
            r = case.call_and_validate(base_url=served.url, checks=CHECKS)
            seen[case.operation.label, r.status_code] += 1

        run()
    assert examples >= 200
    # The generated bodies reach the model: images classified, v2 bodies validated.
    assert seen["POST /v1/classify", 200] > 0 and seen["POST /v2/models/{name}/infer", 400] > 0
