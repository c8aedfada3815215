"""Schemathesis against fnhost's own OpenAPI schema, on a real `fnhost serve` over HTTP.

Every operation of `/schema/openapi.json` gets schema-valid (positive) and schema-breaking
(negative) requests, with the admin key and without any key. Half of the cases name the
app and functions deployed here, so requests reach real functions, not only 400/404s.

What must hold for every response:
- no 5xx made by fnhost itself; a public call (`/fn/`) may answer 500/502/504 only with
  fnhost's failure body for a function that ran (`detail.invocationId`);
- every 4xx/5xx body is JSON with an `error` message;
- no traceback, source location or server path in any body;
- management responses conform to the schema (status, content type, body) where declared.

The budget is fixed and the generation derandomized, so CI is reproducible.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fnhost.testing import postgres_database
from tests.live_server import ADMIN, LiveServer, live_server

MAX_EXAMPLES = 25  # per operation, generation mode and key: about 2,200 requests in all
APP = "demo"
ECHO = """export default async function handler(req) {
  const url = new URL(req.url);
  const body = await req.arrayBuffer();
  // Sizes only: echoing generated input back could fake a leak in the checks below.
  return Response.json({ method: req.method, path: url.pathname.length, body: body.byteLength });
}"""
BOOM = "export default async function handler() { throw new Error('boom'); }"
FUNCTIONS: dict[str, dict[str, Any]] = {
    "echo": {"code": ECHO},
    "boom": {"code": BOOM},
    "get-only": {"code": ECHO, "trigger": {"type": "http", "config": {"method": "GET"}}},
    "private": {"code": ECHO, "trigger": {"type": "http", "config": {"auth": "required"}}},
    "cron-only": {"code": ECHO, "trigger": {"type": "cron", "config": {"schedule": "0 0 1 1 *"}}},
}
KNOWN_NAMES = [*FUNCTIONS, "missing"]
# fnhost's own failure messages for a function that ran (fnhost.api.calls.FAILURE_MESSAGES).
FUNCTION_FAILURES = {
    "the function threw an error",
    "the function did not return a Response",
    "the function timed out",
    "memory limit exceeded",
    "the function's worker failed",
}
REPO = Path(__file__).resolve().parents[1]
LEAKS = ("Traceback (most recent call last)", 'File "', "site-packages", str(REPO))
SCHEMA_CHECKS = [response_schema_conformance, content_type_conformance, status_code_conformance]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """fnhost on its default SQLite store, then on PostgreSQL: what a store refuses (NUL
    bytes, over-long values) differs, and must never become a 500."""
    workdir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    # No management rate limit: 429s would only hide the routes behind them.
    settings = {"FNHOST_LIMITS__MANAGEMENT_PER_SECOND_PER_APP": "0"}
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            settings["FNHOST_STORE__URL"] = stack.enter_context(postgres_database())
        yield stack.enter_context(live_server(workdir, settings))


def deploy_missing(server: LiveServer) -> None:
    """(Re)deploy the fixture functions a fuzzed DELETE or deploy may have changed."""
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as client:
        listed = client.get(f"/v1/{APP}/functions").json()["functions"]
        present = {f["name"]: f for f in listed}
        for name, fields in FUNCTIONS.items():
            current = present.get(name)
            if current is None or current["trigger"]["type"] != fields.get("trigger", {}).get(
                "type", "http"
            ):
                deployed = client.post(f"/v1/{APP}/functions", json={"name": name, **fields})
                assert deployed.status_code in (200, 201), deployed.text


def pinned_strategy(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Cases whose app id is this app and whose function name is a known one."""
    names = set(re.findall(r"{(\w+)}", operation.path))
    if "app_id" not in names:
        return operation.as_strategy(generation_mode=mode)
    if "name" not in names:
        return operation.as_strategy(generation_mode=mode, path_parameters={"app_id": APP})
    return st.sampled_from(KNOWN_NAMES).flatmap(
        lambda name: operation.as_strategy(
            generation_mode=mode, path_parameters={"app_id": APP, "name": name}
        )
    )


class Findings:
    """Requests made and rule violations seen, per operation; violations fail the test."""

    def __init__(self, data_dir: Path) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.violations: list[str] = []
        self.unsatisfiable: list[str] = []
        self.leaks = (*LEAKS, str(data_dir))

    def judge(self, case: Any, response: requests.Response) -> None:
        public_call = "/fn/" in case.operation.path
        self.requests[case.operation.label] += 1
        self.statuses[response.status_code] += 1
        problems = self._problems(case, response, public_call)
        if not public_call:
            try:
                case.validate_response(response, checks=SCHEMA_CHECKS)
            except BaseException as failures:  # FailureGroup is a BaseExceptionGroup
                if not isinstance(failures, Exception | BaseExceptionGroup):
                    raise
                problems.append(_first_line(failures))
        if problems:
            self.violations.append(
                f"{case.operation.label} -> {response.status_code} {response.text[:300]!r}: "
                f"{'; '.join(problems)}\n    {case.as_curl_command()}"
            )

    def _problems(self, case: Any, response: requests.Response, public_call: bool) -> list[str]:
        status, text = response.status_code, response.text
        problems = [f"body contains {leak!r}" for leak in self.leaks if leak in text]
        if status < 400 or case.method.upper() == "HEAD":
            return problems
        try:
            body = response.json()
        except ValueError:
            return [*problems, "error body is not JSON"]
        if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
            return [*problems, "error body has no 'error' message"]
        if status >= 500:
            ran = (
                public_call
                and status in (500, 502, 504)
                and body["error"] in FUNCTION_FAILURES
                and re.fullmatch(
                    r"[0-9a-f]{32}", str((body.get("detail") or {}).get("invocationId"))
                )
            )
            if not ran:
                problems.append("a 5xx from fnhost itself")
        return problems

    def report(self, label: str) -> str:
        total = sum(self.requests.values())
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        lines = [
            f"schemathesis ({label}): {total} requests over {len(self.requests)} operations "
            f"(max {MAX_EXAMPLES} examples per operation and mode); statuses {statuses}",
        ]
        if self.unsatisfiable:
            lines.append(f"  no negative cases possible for: {', '.join(self.unsatisfiable)}")
        return "\n".join(lines)


def _first_line(failures: BaseException) -> str:
    nested = getattr(failures, "exceptions", None) or [failures]
    return " | ".join(str(f).strip().splitlines()[0] for f in nested)


def fuzz(server: LiveServer, headers: dict[str, str], label: str) -> Findings:
    schema = schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json")
    findings = Findings(server.data_dir)
    session = requests.Session()
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]  # the served schema is valid
    operations = sorted((r.ok() for r in results if isinstance(r, Ok)), key=lambda op: op.label)
    assert len(operations) >= 20, [op.label for op in operations]
    for operation in operations:
        deploy_missing(server)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.one_of(
                operation.as_strategy(generation_mode=mode), pinned_strategy(operation, mode)
            )

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: every case is judged
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call(session=session, headers=headers, timeout=30)
                findings.judge(case, response)

            try:
                run()
            except Unsatisfiable:  # e.g. nothing to negate: only free-form path strings
                findings.unsatisfiable.append(f"{operation.label} ({mode.value})")
    return findings


@pytest.mark.timeout(300)
@pytest.mark.parametrize("label", ["admin key", "no key"])
def test_schemathesis_finds_no_server_error_nor_leak(
    server: LiveServer, label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = ADMIN if label == "admin key" else {}
    findings = fuzz(server, headers, label)
    with capsys.disabled():
        print("\n" + findings.report(label))
    assert not findings.violations, "\n".join(findings.violations[:30])
    assert "unexpected error" not in server.output, server.output[-5000:]
    # Sanity: the fuzz reached real functions, not only validation errors.
    assert findings.statuses[200] > 0
    if label == "no key":
        assert findings.statuses[401] > 0


def test_schema_documents_the_error_body(server: LiveServer) -> None:
    schema = httpx.get(f"{server.url}/schema/openapi.json").json()
    deploy = schema["paths"]["/v1/{app_id}/functions"]["post"]["responses"]
    assert {"200", "201", "400", "401", "403", "404", "413", "422", "429"} <= set(deploy)
    assert deploy["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert json.dumps(schema["components"]["schemas"]["ErrorBody"]["required"]) == '["error"]'
