"""Configuration: defaults, `fnhost init`, FNHOST_* overrides, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fnhost.config import CONFIG_TEMPLATE, load_config, parse_config
from fnhost.errors import ConfigError

FNHOST = [sys.executable, "-m", "fnhost.cli"]


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert (config.server.host, config.server.port, config.server.data_dir) == (
        "127.0.0.1",
        8080,
        ".fnhost",
    )
    assert config.store.use == "sql" and config.runtime.use == "deno"
    assert config.source == "defaults"


def test_init_writes_a_commented_file_that_loads(tmp_path: Path) -> None:
    result = subprocess.run([*FNHOST, "init"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "fnhost.toml").read_text()
    assert text == CONFIG_TEMPLATE and text.count("#") > 10
    config = load_config(tmp_path / "fnhost.toml", environ={})
    assert config.runtime.section("deno") == {"max_warm": 50, "idle_seconds": 300}
    again = subprocess.run([*FNHOST, "init"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "fnhost.toml"
    path.write_text(CONFIG_TEMPLATE)
    config = load_config(
        path,
        environ={
            "FNHOST_SERVER__PORT": "9090",
            "FNHOST_STORE__URL": "postgresql+asyncpg://u@h/db",
            "FNHOST_RUNTIME__DENO__MAX_WARM": "7",
            "FNHOST_PLUGINS__DISABLE": '["websocket"]',
        },
    )
    assert config.server.port == 9090
    assert config.store.section("sql") == {"url": "postgresql+asyncpg://u@h/db"}
    assert config.runtime.section("deno")["max_warm"] == "7"  # the plugin's Struct converts it
    assert config.plugins.disable == ["websocket"]


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"server": {"port": "high"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"plugins": {"modules": "x"}}, "plugins.modules"),
        ({"sever": {}}, "sever"),
        ({"store": {"use": 3}}, "store.use"),
    ],
)
def test_bad_key_or_value_names_it(raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert named in caught.value.message and "\n" not in caught.value.message


def test_bad_config_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "fnhost.toml").write_text('[runtime.deno]\nmax_warm = "lots"\n')
    result = subprocess.run(
        [*FNHOST, "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtime.deno.max_warm" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_runtime_stops_serve_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FNHOST_RUNTIME__USE": "lambda", "NO_COLOR": "1"}
    result = subprocess.run(
        [*FNHOST, "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "'lambda'" in result.stderr


def test_template_is_valid_toml() -> None:
    assert tomllib.loads(CONFIG_TEMPLATE)["server"]["port"] == 8080
