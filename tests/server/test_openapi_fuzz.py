"""The OpenAPI schema documents every request body and error answer, and is as strict as the
server: schemathesis with `--checks all` (bounded examples, deterministic) against a real
elf-serve with the admin endpoint on finds nothing: no 5xx, no answer off the schema, no
schema-valid request refused, no schema-invalid request accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import ADMIN_TOKEN
from tests.server.live import LiveServer

pytestmark = pytest.mark.integration


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


SCHEMATHESIS_TOML = """
# Where JSON Schema cannot say what the server checks, a schema-valid request may get 400: the
# bytes of an image must decode as an image (v1 classify, v2 BYTES), and a v2 tensor's data must
# hold as many values as its shape says. Every other operation keeps the default statuses.
[[operations]]
include-path-regex = "/(classify|infer)$"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def test_schemathesis_checks_all_finds_nothing(admin_server: LiveServer, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [str(st), "--config-file", str(config), "run", f"{admin_server.url}/openapi.json"]
    cmd += ["--checks", "all", "--max-examples", "30", "--generation-deterministic"]
    cmd += ["--header", f"Authorization: Bearer {ADMIN_TOKEN}", "--no-color"]
    # An unload would leave every other operation to 404 (tests/server/test_repository.py).
    cmd += ["--exclude-path-regex", "/unload$"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Tested: 16" in proc.stdout, proc.stdout[-3000:]
    assert "Missing test data" not in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in admin_server.logs()
