"""Hand-written hostile input against a real `fnhost serve`: path traversal, header
injection and smuggling over raw sockets (httpx refuses to send them), huge and many
headers, slowloris, huge, nested, undecodable and ill-typed bodies, odd numbers, and
values a store cannot hold (on SQLite and PostgreSQL).

The rule everywhere: a 4xx with a JSON `{"error": ...}` body (or uvicorn's own plain
400 for a request it cannot parse), never a 5xx from fnhost, a hang or a traceback.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fnhost.config import ServerConfig
from tests.live_server import ADMIN, LiveServer, live_server

MAX_BODY = 1024 * 1024
MAX_CODE = 64 * 1024
ECHO = """export default async function handler(req) {
  const url = new URL(req.url);
  const body = new Uint8Array(await req.arrayBuffer());
  return Response.json({
    method: req.method, path: url.pathname, search: url.search, bodyBytes: body.length,
    headers: Object.fromEntries(req.headers),
  });
}"""
SPLITTER = """export default async function handler() {
  return new Response("x", { headers: { "X-A": "a\\r\\nSet-Cookie: evil=1" } });
}"""
THROW_NUL = "export default async function handler() { throw new Error('a\\u0000b'); }"
NESTING = 100_000
LEAKS = ("Traceback", 'File "', "site-packages")
HEADER_SECONDS = ServerConfig().header_timeout_seconds
BODY_SECONDS = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = {
        "FNHOST_SERVER__MAX_BODY_BYTES": str(MAX_BODY),
        "FNHOST_SERVER__MAX_CODE_BYTES": str(MAX_CODE),
        "FNHOST_LIMITS__MANAGEMENT_PER_SECOND_PER_APP": "0",
        "FNHOST_SERVER__BODY_TIMEOUT_SECONDS": str(BODY_SECONDS),
    }
    with live_server(tmp_path_factory.mktemp("hostile"), settings) as running:
        with httpx.Client(base_url=running.url, headers=ADMIN, timeout=60) as client:
            for name, code in (("echo", ECHO), ("splitter", SPLITTER)):
                deployed = client.post("/v1/demo/functions", json={"name": name, "code": code})
                assert deployed.status_code == 201, deployed.text
        yield running
    # Whatever a test sent, fnhost itself never failed.
    assert "unexpected error" not in running.output, running.output[-5000:]


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http:
        yield http


# -- raw HTTP --------------------------------------------------------------------------


class RawResponse:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        self.status = int(match.group(1)) if match else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


def raw_exchange(server: LiveServer, request: bytes, timeout: float = 10) -> RawResponse:
    """Send bytes as they are; read one response (by Content-Length) or until closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-send: the answer may already be there
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    return RawResponse(data)


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: fnhost.test\r\n" + b"".join(headers) + b"\r\n"


def assert_json_error(response: RawResponse | httpx.Response, *statuses: int) -> None:
    status = response.status if isinstance(response, RawResponse) else response.status_code
    body = response.body if isinstance(response, RawResponse) else response.content
    assert status in statuses, (status, body[:300])
    assert json.loads(body)["error"], body[:300]
    assert not any(leak.encode() in body for leak in LEAKS), body[:300]


# -- paths -------------------------------------------------------------------------------

# (raw request target, what must answer): "echo" = the echo function ran, with this path.
TRAVERSALS: list[tuple[bytes, int, str | None]] = [
    (b"/v1/demo/fn/echo/../../functions", 200, "/functions"),
    (b"/v1/demo/fn/echo/%2e%2e%2f%2e%2e%2ffunctions", 200, "/functions"),
    (b"/v1/demo/fn/echo/..%2F..%2Fetc/passwd", 200, "/etc/passwd"),
    (b"/v1/demo/fn/echo%2fx", 200, "/x"),
    (b"/v1/demo/fn/../functions", 404, None),
    (b"/v1/demo/fn/%2e%2e/functions", 404, None),
    (b"/v1/demo/fn/x/../../functions", 404, None),
    (b"/v1/demo/fn/echo%00", 404, None),
    (b"/v1/demo/fn/" + b"a" * 50_000, 404, None),
    (b"/v1/%2e%2e%2f%2e%2e%2fdemo/functions", 404, None),
    (b"/v1/demo/functions/..%2Fecho", 404, None),
    (b"/v1/demo/functions/%2e%2e", 404, None),
    (b"/v1/demo%00/functions", 400, None),
]


@pytest.mark.parametrize(("target", "status", "echoed_path"), TRAVERSALS)
def test_path_traversal_stays_inside_the_named_function(
    server: LiveServer, target: bytes, status: int, echoed_path: str | None
) -> None:
    response = raw_exchange(
        server, get(target, b"Authorization: " + ADMIN["Authorization"].encode() + b"\r\n")
    )
    if echoed_path is None:
        assert_json_error(response, status)
        return
    assert response.status == status, response.raw[:300]
    # The function ran and saw a path in its own URL space: nothing above it is reachable,
    # and it never serves fnhost's management API or the host's files.
    seen = response.json()
    assert seen["method"] == "GET" and seen["path"] == echoed_path
    assert b"root:" not in response.body and b'functions":[' not in response.body


def test_nul_and_very_long_paths(server: LiveServer, client: httpx.Client) -> None:
    assert raw_exchange(server, get(b"/v1/demo/fn/echo/\x00")).status == 400  # uvicorn's
    assert_json_error(raw_exchange(server, get(b"/v1/demo/fn/echo/" + b"a" * 200_000)), 431)
    called = client.get("/v1/demo/fn/echo/%00")
    assert called.status_code == 200 and called.json()["path"] == "/"
    # Recorded with the NUL escaped: a store refusing NUL would lose the record otherwise.
    records = client.get("/v1/demo/functions/echo/logs", params={"limit": 5}).json()["logs"]
    assert "/%00" in [r["path"] for r in records]


# -- headers -----------------------------------------------------------------------------

INJECTIONS = {
    "bare CR": get(b"/v1/demo/fn/echo", b"X-A: a\rInjected: b\r\n"),
    "bare LF": get(b"/v1/demo/fn/echo", b"X-A: a\nInjected: b\r\n"),
    "NUL in a value": get(b"/v1/demo/fn/echo", b"X-A: a\x00b\r\n"),
    "obsolete line folding": get(b"/v1/demo/fn/echo", b"X-A: a\r\n Injected: b\r\n"),
    "space before the colon": get(b"/v1/demo/fn/echo", b"X-A : a\r\n"),
    "two Content-Lengths": b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "negative Content-Length": b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -1\r\n\r\nabc",
    "Content-Length overflow": b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 99999999999999999999\r\n\r\nabc",
    "smuggling (CL + TE)": b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /v1/demo/functions HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", INJECTIONS.values(), ids=INJECTIONS.keys())
def test_header_injection_and_smuggling_are_refused(
    server: LiveServer, request_bytes: bytes
) -> None:
    response = raw_exchange(server, request_bytes)
    # uvicorn refuses these before fnhost sees them (a plain-text 400), and closes the
    # connection: no second, smuggled request is answered.
    assert response.status == 400, response.raw[:300]
    assert response.raw.count(b"HTTP/1.1 ") == 1


def test_function_cannot_split_its_response_headers(client: httpx.Client) -> None:
    response = client.get("/v1/demo/fn/splitter")
    assert_json_error(response, 500)
    assert "set-cookie" not in response.headers


def test_caller_cannot_set_forwarded_host_or_proto(server: LiveServer) -> None:
    response = raw_exchange(
        server,
        get(
            b"/v1/demo/fn/echo",
            b"X-Forwarded-Host: evil.example\r\n",
            b"X-Forwarded-Proto: gopher\r\n",
        ),
    )
    headers = response.json()["headers"]
    assert headers["x-forwarded-host"] == "fnhost.test"
    assert headers["x-forwarded-proto"] == "http"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"X-Big: " + b"a" * 100_000 + b"\r\n", 431),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), 431),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(500)), 200),
    ],
    ids=["one 100 KB header", "10,000 headers", "500 headers"],
)
def test_huge_and_many_headers(server: LiveServer, extra: bytes, status: int) -> None:
    response = raw_exchange(server, get(b"/v1/demo/fn/echo", extra))
    if status == 200:
        assert response.status == 200 and len(response.json()["headers"]) > 500
    else:
        assert_json_error(response, status)


def test_a_10_mb_header_is_cut_short(server: LiveServer, client: httpx.Client) -> None:
    started = time.monotonic()
    response = raw_exchange(server, get(b"/health", b"X-Big: " + b"a" * 10_000_000 + b"\r\n"))
    assert response.status in (0, 431)  # 0: reset before the answer could be read
    assert time.monotonic() - started < 5
    assert client.get("/health").status_code == 200


@pytest.mark.timeout(60)
def test_slowloris_neither_starves_others_nor_holds_connections(
    server: LiveServer, client: httpx.Client
) -> None:
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    answers: list[bytes] = [b""] * len(slow)

    def trickle(index: int, sock: socket.socket) -> None:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            for _ in range(int(HEADER_SECONDS) + 5):  # one byte a second, never finishing
                if select.select([sock], [], [], 1.0)[0]:  # the server answered
                    answers[index] = sock.recv(1024)
                    return
                sock.sendall(b"a")
        except OSError:
            pass

    threads = [threading.Thread(target=trickle, args=item) for item in enumerate(slow)]
    for thread in threads:
        thread.start()
    try:
        worst = 0.0
        deadline = time.monotonic() + HEADER_SECONDS - 1
        calls = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            assert client.get("/v1/demo/fn/echo").status_code == 200
            worst = max(worst, time.monotonic() - started)
            calls += 2
            time.sleep(0.25)
        assert calls >= 20 and worst < 2.0, (calls, worst)
        for thread in threads:
            thread.join(HEADER_SECONDS + 15)
    finally:
        for sock in slow:
            sock.close()
    # Each slow connection was answered 408 and closed after HEADER_SECONDS.
    timed_out = sum(1 for answer in answers if answer.startswith(b"HTTP/1.1 408"))
    assert timed_out == len(slow), [a[:40] for a in answers]


def test_a_body_announced_and_never_sent_is_408_after_the_body_timeout(
    server: LiveServer, client: httpx.Client
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b"
        )
        sock.settimeout(BODY_SECONDS + 5)
        answer = sock.recv(4096)
        waited = time.monotonic() - started
        assert sock.recv(4096) == b""  # and the connection is closed
    assert answer.startswith(b"HTTP/1.1 408") and b"request body not received in time" in answer
    assert BODY_SECONDS - 0.5 < waited < BODY_SECONDS + 3
    assert client.get("/health").status_code == 200


def test_a_slow_body_that_keeps_coming_is_served(server: LiveServer) -> None:
    parts = [b"a" * 10, b"b" * 10, b"c" * 10]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/demo/fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n"
            b"Connection: close\r\n\r\n"
        )
        for part in parts:  # each gap shorter than the timeout, the whole body longer
            time.sleep(BODY_SECONDS * 0.6)
            sock.sendall(part)
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b'"bodyBytes":30' in answer, answer[:300]


# -- bodies ------------------------------------------------------------------------------

MANAGEMENT_BODIES = [
    ("POST", "/v1/demo/functions"),
    ("POST", "/v1/demo/functions/echo/invoke"),
    ("PATCH", "/v1/demo/functions/echo/env"),
    ("PUT", "/v1/demo/settings"),
]


def test_oversized_bodies_are_413(client: httpx.Client) -> None:
    big = b"x" * (2 * MAX_BODY)

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    for method, path in [*MANAGEMENT_BODIES, ("POST", "/v1/demo/fn/echo")]:
        assert_json_error(client.request(method, path, content=big), 413)
        assert_json_error(client.request(method, path, content=chunks()), 413)  # chunked
    code = "export default async () => new Response('" + "x" * MAX_CODE + "');"
    deployed = client.post("/v1/demo/functions", json={"name": "huge", "code": code})
    assert_json_error(deployed, 413)
    assert "code" in deployed.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * NESTING + b"]" * NESTING,
        b'{"a":' * NESTING + b"1" + b"}" * NESTING,
        b'{"name":"n","code":' + b"[" * NESTING + b"]" * NESTING + b"}",
        b'{"body":' + b"[" * NESTING + b"]" * NESTING + b"}",
    ],
    ids=["arrays", "objects", "in a field", "in an invoke body"],
)
def test_deeply_nested_json_is_a_400(client: httpx.Client, body: bytes) -> None:
    for method, path in MANAGEMENT_BODIES:
        started = time.monotonic()
        response = client.request(method, path, content=body)
        assert_json_error(response, 400)
        assert time.monotonic() - started < 5


UNDECODABLE = {
    "not UTF-8": b"\xff\xfe\x00garbage",
    "invalid UTF-8 in a string": b'{"name":"a\xff","code":"x"}',
    "overlong UTF-8": b'{"name":"\xc0\xaf","code":"x"}',
    "lone surrogate escape": b'{"name":"\\ud800","code":"x"}',
    "UTF-16": '{"name":"x","code":"y"}'.encode("utf-16"),
    "truncated": b'{"name":"x","code":"y"',
    "empty": b"",
    "NaN": b'{"name":"x","code":"y","timeoutMs":NaN}',
    "trailing garbage": b'{"name":"x","code":"y"}{}',
}


@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_undecodable_bodies_are_a_4xx(client: httpx.Client, body: bytes) -> None:
    for method, path in MANAGEMENT_BODIES:
        response = client.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )
        assert_json_error(response, 400, 422)


def test_public_calls_pass_any_bytes_through(client: httpx.Client) -> None:
    body = bytes(range(256)) * 4
    called = client.post("/v1/demo/fn/echo", content=body)
    assert called.status_code == 200 and called.json()["bodyBytes"] == len(body)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_wrong_content_types_are_a_400(client: httpx.Client, content_type: str) -> None:
    body = b"name=x&code=y" if "form" in content_type else b"<deploy><name>x</name></deploy>"
    for method, path in MANAGEMENT_BODIES:
        response = client.request(
            method, path, content=body, headers={"Content-Type": content_type}
        )
        assert_json_error(response, 400)


def test_json_sent_as_text_plain_is_read_as_json(client: httpx.Client) -> None:
    # Lenient on purpose: a cross-site form cannot carry the Authorization header anyway.
    body = json.dumps({"name": "plain", "code": ECHO})
    deployed = client.post(
        "/v1/demo/functions", content=body, headers={"Content-Type": "text/plain"}
    )
    assert deployed.status_code == 201, deployed.text


def test_duplicate_json_keys_last_one_wins(client: httpx.Client) -> None:
    body = '{"name":"dup-a","name":"dup-b","code":' + json.dumps(ECHO) + "}"
    deployed = client.post("/v1/demo/functions", content=body)
    assert deployed.status_code == 201 and deployed.json()["name"] == "dup-b"
    assert client.get("/v1/demo/functions/dup-a").status_code == 404
    patched = client.patch("/v1/demo/functions/dup-b/env", content=b'{"K":"1","K":null}')
    assert patched.status_code == 200 and patched.json()["envVarNames"] == []


HUGE_INT = "1" + "0" * 5000


@pytest.mark.parametrize(
    ("field", "raw", "status"),
    [
        ("timeoutMs", "1e309", 400),
        ("timeoutMs", "1e30", 422),
        ("timeoutMs", "1.5", 422),
        ("timeoutMs", "-1", 422),
        ("timeoutMs", "0", 422),
        ("timeoutMs", "300001", 422),
        ("timeoutMs", "true", 422),
        ("timeoutMs", "Infinity", 400),
        ("timeoutMs", HUGE_INT, 400),
        ("memoryLimitMb", "63", 422),
        ("memoryLimitMb", "-" + HUGE_INT, 400),
    ],
)
# Not refused: "30000" (a numeric string) is read as 30000; Litestar decodes bodies leniently.
def test_odd_numbers_are_refused(client: httpx.Client, field: str, raw: str, status: int) -> None:
    body = f'{{"name":"numbers","code":{json.dumps(ECHO)},"{field}":{raw}}}'
    assert_json_error(client.post("/v1/demo/functions", content=body), status)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": HUGE_INT},
        {"limit": "abc"},
        {"level": "debug"},
        {"since": "9" * 5000},
        {"since": "2020-01-01T00:00:00"},
        {"since": "99999-01-01T00:00:00Z"},
    ],
)
def test_odd_log_queries_are_refused(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/v1/demo/functions/echo/logs", params=params)
    assert_json_error(response, 400, 422)
    assert "ParamType" not in response.text


@pytest.mark.parametrize("method", ["A" * 40, "GE T", "GET\r\nX: y", ""])
def test_test_invoke_refuses_a_method_that_is_not_a_token(
    client: httpx.Client, method: str
) -> None:
    assert_json_error(client.post("/v1/demo/functions/echo/invoke", json={"method": method}), 422)


def test_unknown_fields_are_named(client: httpx.Client) -> None:
    response = client.post("/v1/demo/functions/echo/invoke", json={"bogus": 1})
    assert_json_error(response, 422)
    assert "bogus" in response.json()["error"]


# -- values a store cannot hold ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("postgres_url")
    return {"FNHOST_STORE__URL": url}


@pytest.mark.timeout(90)
def test_values_a_store_cannot_hold_are_refused_or_escaped(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    # PostgreSQL text cannot hold NUL and `method` is VARCHAR(16): each of these used to
    # be a 500, or a record that poisoned the journal and was retried forever.
    with (
        live_server(tmp_path, store_settings) as srv,
        httpx.Client(base_url=srv.url, headers=ADMIN, timeout=30) as http,
    ):
        for name, code in (("echo", ECHO), ("thrownul", THROW_NUL)):
            assert (
                http.post("/v1/demo/functions", json={"name": name, "code": code}).status_code
                == 201
            )
        assert_json_error(http.get("/v1/demo/functions/echo%00"), 404)
        assert_json_error(http.get("/v1/demo/functions/echo%00/logs"), 404)
        assert_json_error(http.get("/v1/demo/fn/echo%00"), 404)
        for field, value in (("description", "a\x00b"), ("code", ECHO + "\n// a\x00b")):
            deployed = http.post(
                "/v1/demo/functions", json={"name": "nul", "code": ECHO, field: value}
            )
            assert_json_error(deployed, 422)
        assert http.get("/v1/demo/fn/echo/%00").status_code == 200
        assert_json_error(http.get("/v1/demo/fn/thrownul"), 500)
        invoked = http.post("/v1/demo/functions/echo/invoke", json={"path": "/\x00"})
        assert invoked.status_code == 200 and invoked.json()["status_code"] == 200
        assert_json_error(
            http.post("/v1/demo/functions/echo/invoke", json={"method": "A" * 17}), 422
        )
        paths = [r["path"] for r in http.get("/v1/demo/functions/echo/logs").json()["logs"]]
        assert sorted(paths) == ["/%00", "/%00"]
        errors = [r["error"] for r in http.get("/v1/demo/functions/thrownul/logs").json()["logs"]]
        assert len(errors) == 1 and "\x00" not in errors[0]
        assert not list(srv.data_dir.glob("records.*")), "records went to the journal"
    assert "unexpected error" not in srv.output, srv.output[-5000:]


def test_stack_traces_and_compile_errors_do_not_reveal_server_paths(
    server: LiveServer, client: httpx.Client
) -> None:
    code = """function inner() { throw new Error("boom"); }
export default async function handler() { console.error(new Error("logged").stack); inner(); }"""
    assert (
        client.post("/v1/demo/functions", json={"name": "stack", "code": code}).status_code == 201
    )
    invoked = client.post("/v1/demo/functions/stack/invoke", json={})
    assert invoked.json()["error"] == "boom" and "handler.ts" in invoked.text
    refused = [
        client.post("/v1/demo/functions", json={"name": "imports", "code": source})
        for source in (
            "import x from 'file:///etc/passwd'; export default async () => new Response(x);",
            "import x from './nope.ts'; export default async () => new Response(x);",
            "export default function (\n",
        )
    ]
    for response in [invoked, *refused, client.get("/v1/demo/functions/stack/logs")]:
        assert (
            str(server.data_dir) not in response.text and str(server.workdir) not in response.text
        )
    assert [r.status_code for r in refused] == [400, 400, 400]
