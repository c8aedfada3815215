"""What only the "docker" runtime has: hardened containers, their labels and lifecycle on a
real engine, the engine's OOM killer, dead containers, and the image build."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fnhost.errors import CodeCheckFailed, Unavailable
from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost.testing.runtime_contract import (
    COUNTER,
    ECHO_REQUEST,
    HELLO,
    assert_ok,
    call,
    make_spec,
)
from fnhost_docker.container import LABEL_PREFIX
from fnhost_docker.engine import resolve_docker_host
from fnhost_docker.image import RuntimeImage, linked_libraries
from fnhost_docker.runtime import DockerRuntime

MiB = 1024 * 1024
SLOW = """export default async (req) => {
  if (new URL(req.url).pathname === "/slow") await new Promise((r) => setTimeout(r, 5000));
  return new Response("late");
}"""


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def only_container(runtime: DockerRuntime) -> str:
    ids = list(runtime.container_ids().values())
    assert len(ids) == 1, ids
    return ids[0]


def exists(engine: Any, container_id: str) -> bool:
    import docker.errors

    try:
        engine.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return False
    return True


def absent(engine: Any, container_id: str) -> Callable[[], bool]:
    return lambda: not exists(engine, container_id)


# ---- hardening ---------------------------------------------------------------------


async def test_a_function_container_is_hardened(runtime: DockerRuntime, engine: Any) -> None:
    secret_code = HELLO.replace("Hello, world!", "code-marker-7d1f")
    function = make_spec(secret_code, env={"API_TOKEN": "env-secret-4b2e"}, memory_limit_mb=128)
    assert_ok(await call(runtime, function))
    info = engine.api.inspect_container(only_container(runtime))
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert info["Config"]["User"] == "10001:10001"
    assert not host["CapAdd"]
    assert host["CapDrop"] == ["ALL"]
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 128
    assert host["Memory"] == (128 + 96) * MiB
    assert host["MemorySwap"] == host["Memory"]  # no swap
    assert host["NanoCpus"] == 1_000_000_000
    assert "/tmp" in host["Tmpfs"]
    assert not info["Mounts"] and not host["Binds"]  # no host mounts at all
    assert not host["PortBindings"] and not info["NetworkSettings"]["Ports"]  # nothing published
    network = engine.api.inspect_network(host["NetworkMode"])
    assert network["Name"] == "fnhost"
    assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert host["LogConfig"]["Type"] == "none"
    labels = info["Config"]["Labels"]
    assert labels[LABEL_PREFIX + "owner"] == runtime.owner
    assert labels[LABEL_PREFIX + "app"] == "contract"
    assert labels[LABEL_PREFIX + "function"] == "fn"
    assert labels[LABEL_PREFIX + "revision"] == "1"
    # The code and the env vars reached the container over its stdin, not its config.
    inspected = json.dumps(info)
    assert "env-secret-4b2e" not in inspected
    assert "API_TOKEN" not in inspected
    assert "code-marker-7d1f" not in inspected


async def test_a_container_sees_no_host_file_and_cannot_write_its_root(
    runtime: DockerRuntime, engine: Any, tmp_path: Path
) -> None:
    host_secret = tmp_path / "host-secret.txt"
    host_secret.write_text("do not leak")
    assert_ok(await call(runtime, make_spec(HELLO)))
    # Beyond what Deno's permissions refuse a function: even a fully privileged Deno in the
    # container finds no host file, an unprivileged user, a read-only root and a /tmp.
    probe = f"""
      const seen = {{}};
      try {{ Deno.readTextFileSync({json.dumps(str(host_secret))}); seen.host = "read"; }}
      catch (e) {{ seen.host = e.name; }}
      try {{ Deno.writeTextFileSync("/probe", "x"); seen.root = "written"; }}
      catch (e) {{ seen.root = /read-only/i.test(e.message) ? "read-only" : e.name; }}
      Deno.writeTextFileSync("/tmp/probe", "x");
      seen.uid = Deno.uid();
      console.log(JSON.stringify(seen));
    """
    command = ["/opt/fnhost/deno", "eval", "--quiet", "-A", textwrap.dedent(probe)]
    exec_id = engine.api.exec_create(only_container(runtime), command)["Id"]
    output = engine.api.exec_start(exec_id).decode()
    assert json.loads(output.strip().splitlines()[-1]) == {
        "host": "NotFound",
        "root": "read-only",
        "uid": 10001,
    }


async def test_functions_cannot_read_files_with_deno_either(runtime: DockerRuntime) -> None:
    code = """export default async () => {
      const tried = {};
      for (const path of ["/etc/passwd", "/opt/fnhost/bootstrap.ts", "/proc/self/environ"]) {
        try { await Deno.readTextFile(path); tried[path] = "read"; }
        catch (e) { tried[path] = e.name; }
      }
      return Response.json(tried);
    }"""
    result = await call(runtime, make_spec(code))
    assert_ok(result)
    assert set(json.loads(result.body).values()) == {"NotCapable"}


# ---- lifecycle -------------------------------------------------------------------


async def test_orphans_of_a_dead_fnhost_exit_and_are_removed_at_start(
    make_runtime: Any, engine: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # A fnhost that dies without stopping anything (os._exit), leaving a warm container.
    script = f"""
import asyncio, os, sys
from pathlib import Path
from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost.testing.runtime_contract import HELLO, call, make_spec

async def main():
    platform = Platform(make_config(Path({str(data_dir)!r}), runtime={{"use": "docker"}}))
    await platform.runtime.start()
    result = await call(platform.runtime, make_spec(HELLO))
    assert result.outcome == "ok", result.error
    print(*platform.runtime.container_ids().values(), flush=True)
    os._exit(0)

asyncio.run(main())
"""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    orphan = done.stdout.split()[-1]
    # Its stdin closed with fnhost's attach connection: the container ended by itself.
    await eventually(lambda: not engine.api.inspect_container(orphan)["State"]["Running"])
    # A container of another fnhost is not this one's to remove.
    image = engine.api.inspect_container(orphan)["Config"]["Image"]
    other = engine.api.create_container(
        image, labels={LABEL_PREFIX + "owner": "someone-else"}, command=["--version"]
    )["Id"]
    try:
        async with make_runtime(data_dir):
            assert not exists(engine, orphan)
            assert exists(engine, other)
    finally:
        engine.api.remove_container(other, force=True)


async def test_stop_removes_every_container(make_runtime: Any, engine: Any, tmp_path: Path) -> None:
    async with make_runtime(tmp_path / "data") as runtime:
        for name in ("one", "two", "three"):
            assert_ok(await call(runtime, make_spec(HELLO, name=name)))
        ids = list(runtime.container_ids().values())
        assert len(ids) == 3
        assert all(exists(engine, container_id) for container_id in ids)
    assert not any(exists(engine, container_id) for container_id in ids)
    owned = engine.api.containers(
        all=True, filters={"label": f"{LABEL_PREFIX}owner={runtime.owner}"}
    )
    assert owned == []


async def test_a_new_revision_replaces_the_container(runtime: DockerRuntime, engine: Any) -> None:
    first = make_spec(COUNTER, env={"COLOR": "red"})
    assert (await call(runtime, first)).body == b"1"
    old = only_container(runtime)
    patched = make_spec(COUNTER, env={"COLOR": "blue"}, revision=2)
    assert (await call(runtime, patched)).body == b"1"  # a fresh container
    assert only_container(runtime) != old
    await eventually(absent(engine, old))


async def test_idle_containers_are_removed(make_runtime: Any, engine: Any, tmp_path: Path) -> None:
    async with make_runtime(tmp_path / "data", idle_seconds=0.5) as runtime:
        assert_ok(await call(runtime, make_spec(HELLO)))
        container_id = only_container(runtime)
        await eventually(absent(engine, container_id))
        assert runtime.container_ids() == {}
        assert_ok(await call(runtime, make_spec(HELLO)))


async def test_a_saturated_function_gets_more_containers_up_to_the_maximum(
    make_runtime: Any, tmp_path: Path
) -> None:
    which = """const me = crypto.randomUUID();  // one per container
    export default async () => {
      await new Promise((r) => setTimeout(r, 1500));
      return new Response(me);
    }"""
    async with make_runtime(
        tmp_path / "data", max_concurrent_per_container=2, max_containers_per_function=2
    ) as runtime:
        function = make_spec(which)
        await runtime.check(function)
        results = await asyncio.gather(*(call(runtime, function) for _ in range(6)))
        assert all(result.outcome == "ok" for result in results)
        assert len({result.body for result in results}) == 2  # the maximum, not six
        assert len(runtime.pool_container_ids()[("contract", "fn", 1)]) == 2


async def test_an_idle_container_that_kept_a_bursts_memory_is_replaced(
    make_runtime: Any, tmp_path: Path
) -> None:
    grows = """export default (req) => {
      if (new URL(req.url).searchParams.has("grow")) {
        globalThis.kept = [];
        for (let i = 0; i < 40; i++) globalThis.kept.push(new Array(250_000).fill(i + 0.5));
      }
      return new Response("ok");
    }"""
    async with make_runtime(
        tmp_path / "data", recycle_idle_seconds=0.5, recycle_growth_mb=16
    ) as runtime:
        lean, grown = make_spec(grows, name="lean"), make_spec(grows, name="grown")
        assert_ok(await call(runtime, lean))
        assert_ok(await call(runtime, grown, "GET", "/?grow"))
        before = runtime.container_ids()
        await eventually(
            lambda: (
                runtime.container_ids().get(("contract", "grown", 1))
                not in (None, before[("contract", "grown", 1)])
            ),
            within=15,
        )
        assert_ok(await call(runtime, grown))  # the fresh container serves it
        assert runtime.container_ids()[("contract", "lean", 1)] == before[("contract", "lean", 1)]


async def test_max_warm_caps_the_containers(make_runtime: Any, engine: Any, tmp_path: Path) -> None:
    async with make_runtime(tmp_path / "data", max_warm=2) as runtime:
        for name in ("one", "two", "three"):
            assert_ok(await call(runtime, make_spec(HELLO, name=name)))
            assert len(runtime.container_ids()) <= 2
        assert {key[1] for key in runtime.container_ids()} == {"two", "three"}
        owned = lambda: len(  # noqa: E731
            engine.api.containers(
                all=True, filters={"label": f"{LABEL_PREFIX}owner={runtime.owner}"}
            )
        )
        await eventually(lambda: owned() == 2)


# ---- failures --------------------------------------------------------------------


async def test_the_engines_oom_kill_is_a_memory_limit_exceeded(
    runtime: DockerRuntime, engine: Any
) -> None:
    # Off-heap memory escapes V8's heap limit: only the container's memory limit stops it.
    code = """export default (req) => {
      if (new URL(req.url).pathname === "/grow") {
        const hog = [];
        for (;;) hog.push(new Uint8Array(8 * 1024 * 1024).fill(1));
      }
      return new Response("small");
    }"""
    function = make_spec(code, memory_limit_mb=64)
    await runtime.check(function)
    container_id = only_container(runtime)
    since = int(time.time()) - 1  # the engine filters events by whole seconds
    result = await call(runtime, function, "GET", "/grow")
    assert (result.outcome, result.error) == ("memory", "memory limit exceeded")
    events = engine.api.events(
        since=since, until=int(time.time()) + 1, filters={"event": "oom"}, decode=True
    )
    assert container_id in {event["id"] for event in events}
    after = await call(runtime, function)
    assert_ok(after)
    assert after.body == b"small"
    assert only_container(runtime) != container_id


async def test_a_container_killed_mid_call_is_a_crash_then_replaced(
    runtime: DockerRuntime, engine: Any
) -> None:
    function = make_spec(SLOW)
    await runtime.check(function)
    container_id = only_container(runtime)
    in_flight = asyncio.ensure_future(call(runtime, function, "GET", "/slow"))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(engine.api.kill, container_id)
    result = await in_flight
    assert result.outcome == "crash"
    assert result.error is not None and "SIGKILL" in result.error, result.error
    after = await call(runtime, function, "GET", "/")
    assert_ok(after)
    assert after.body == b"late"
    assert only_container(runtime) != container_id
    await eventually(absent(engine, container_id))


async def test_a_module_that_fails_to_load_is_refused_and_its_container_removed(
    runtime: DockerRuntime, engine: Any
) -> None:
    with pytest.raises(CodeCheckFailed) as caught:
        await runtime.check(make_spec("export default 1 +;\n"))
    assert "handler.ts" in caught.value.message or "line" in caught.value.message
    await eventually(
        lambda: (
            not engine.api.containers(
                all=True, filters={"label": f"{LABEL_PREFIX}owner={runtime.owner}"}
            )
        )
    )


async def test_ctx_publish_reaches_the_platform(runtime: DockerRuntime) -> None:
    published: list[tuple[str, str, Any]] = []

    async def publish(app_id: str, channel: str, data: Any) -> None:
        published.append((app_id, channel, data))

    runtime.platform.publish = publish  # type: ignore[method-assign]
    code = """export default (req, ctx) => {
      for (let i = 0; i < 20; i++) ctx.publish("news", { headline: i });
      return new Response("sent");
    }"""
    assert_ok(await call(runtime, make_spec(code)))
    await eventually(lambda: len(published) == 20, within=2)
    assert published == [("contract", "news", {"headline": i}) for i in range(20)]


# ---- the engine and the image ----------------------------------------------------


@pytest.mark.parametrize("docker_host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
async def test_no_engine_stops_start_up_naming_docker_host(
    tmp_path: Path, docker_host: str
) -> None:
    docker = {"docker_host": docker_host}
    config = make_config(tmp_path, runtime={"use": "docker", "docker": docker})
    runtime = Platform(config).runtime
    with pytest.raises(Unavailable) as caught:
        await runtime.start()
    assert f"DOCKER_HOST={docker_host}" in caught.value.message
    await runtime.stop()


async def test_docker_host_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/from-env.sock")
    runtime = Platform(make_config(tmp_path, runtime={"use": "docker"})).runtime
    with pytest.raises(Unavailable, match=r"DOCKER_HOST=unix:///nonexistent/from-env\.sock"):
        await runtime.start()


def test_the_image_tag_follows_deno_and_the_bootstrap() -> None:
    image = RuntimeImage.describe("fnhost-runtime", None)
    assert image.tag.startswith(f"fnhost-runtime:deno-{image.deno_version}-")
    assert RuntimeImage.describe("fnhost-runtime", None).tag == image.tag
    changed = [
        RuntimeImage(**{**image.__dict__, "bootstrap": image.bootstrap + "\n// changed"}),
        RuntimeImage(**{**image.__dict__, "deno_version": "9.9.9"}),
        RuntimeImage(**{**image.__dict__, "base_image": "debian:bookworm-slim"}),
    ]
    assert len({image.tag, *(other.tag for other in changed)}) == 4


def test_the_scratch_image_holds_deno_its_libraries_and_a_user() -> None:
    import io
    import tarfile

    image = RuntimeImage.describe("fnhost-runtime", None)
    libraries = linked_libraries(image.deno_binary)
    assert any("libc.so" in library for library in libraries)
    assert any("ld-linux" in library for library in libraries)
    with tarfile.open(fileobj=io.BytesIO(image.context())) as tar:
        names = set(tar.getnames())
        passwd = tar.extractfile("rootfs/etc/passwd").read().decode()  # type: ignore[union-attr]
        dockerfile = tar.extractfile("Dockerfile").read().decode()  # type: ignore[union-attr]
    assert {"rootfs/opt/fnhost/deno", "rootfs/opt/fnhost/bootstrap.ts"} <= names
    assert {"rootfs" + library for library in libraries} <= names
    assert "fnhost:x:10001:10001" in passwd
    assert dockerfile.startswith("FROM scratch\n")
    assert "USER 10001:10001" in dockerfile


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    from fnhost.errors import ConfigError

    with pytest.raises(ConfigError, match=r"runtime\.docker\.max_warmth"):
        Platform(make_config(tmp_path, runtime={"use": "docker", "docker": {"max_warmth": 3}}))


def test_constructing_the_runtime_does_no_io(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, runtime={"use": "docker", "docker": {"docker_host": "tcp://x:1"}}
    )
    runtime = Platform(config).runtime
    assert isinstance(runtime, DockerRuntime)
    assert runtime.client is None
    assert os.listdir(tmp_path) == []


async def test_large_bodies_cross_the_attach_stream(runtime: DockerRuntime) -> None:
    code = """export default async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      return new Response(body.reverse());
    }"""
    payload = os.urandom(5 * MiB)
    result = await call(runtime, make_spec(code), "POST", "/", body=payload)
    assert_ok(result)
    assert result.body == payload[::-1]


async def test_an_engine_over_tcp_is_a_config_change(
    make_runtime: Any, engine: Any, tmp_path: Path
) -> None:
    local = resolve_docker_host(None)
    if not local.startswith("unix://"):
        pytest.skip("the engine under test is not a local socket")

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(
            local.removeprefix("unix://")
        )

        async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    target.write(chunk)
                    await target.drain()
            target.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    # A TCP endpoint in front of the engine, as a remote engine's would be.
    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        docker_host = f"tcp://127.0.0.1:{port}"
        async with make_runtime(tmp_path / "data", docker_host=docker_host) as runtime:
            result = await call(runtime, make_spec(ECHO_REQUEST), "POST", "/x", body="over tcp")
            assert_ok(result)
            assert json.loads(result.body)["body"] == "over tcp"
    finally:
        server.close()


def test_the_build_image_command(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from fnhost_docker.cli import docker_commands

    monkeypatch.chdir(tmp_path)  # no fnhost.toml: the defaults
    result = CliRunner().invoke(docker_commands, ["build-image"])
    assert result.exit_code == 0, result.output
    tag = RuntimeImage.describe("fnhost-runtime", None).tag
    assert f"{tag}: up to date" in result.output or f"{tag}: built" in result.output
    engine.images.get(tag)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    failed = CliRunner().invoke(docker_commands, ["build-image"])
    assert failed.exit_code == 1
    assert "DOCKER_HOST=unix:///nonexistent/docker.sock" in failed.output
