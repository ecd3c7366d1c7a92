"""A Ray cluster as a user makes one: ``ray start --head`` and a second ``ray start --address``
(two nodes of one CPU on this machine), the study run on it by ``rmtllmf reproduce --executor
ray --address`` with the process executor's numbers, and the failures a join meets, each named
by its cause (nothing listening; a cluster that asks for a token this process does not send)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import stored_numbers, tiny_zoo_config
from rmtllmf.app.reproduce import ReproduceConfig, build_pool
from rmtllmf.study.ray_cluster import address_answers, join_error, token_auth_env, token_source

RAY = shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_token_source_follows_rays_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    env: dict[str, str] = {}
    assert token_source(env) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t0")
    assert token_source(env) == str(tmp_path / ".ray" / "auth_token")
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing")
    assert token_source(env) is None  # Ray reads only that file then
    env["RAY_AUTH_TOKEN"] = "t1"
    assert token_source(env) == "RAY_AUTH_TOKEN"


def test_token_mode_is_chosen_only_when_unset_with_a_token_and_before_rays_import(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    env: dict[str, str] = {}
    assert not token_auth_env(env) and env == {}  # no token anywhere
    env = {"RAY_AUTH_TOKEN": "t"}
    assert token_auth_env(env) and env["RAY_AUTH_MODE"] == "token"
    env = {"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}
    assert not token_auth_env(env) and env["RAY_AUTH_MODE"] == "disabled"  # the user's choice
    monkeypatch.setitem(sys.modules, "ray", object())
    env = {"RAY_AUTH_TOKEN": "t"}
    assert not token_auth_env(env) and "RAY_AUTH_MODE" not in env  # too late: Ray read it


def test_an_address_where_nothing_listens_is_named_as_such():
    port = _free_port()
    assert address_answers(f"127.0.0.1:{port}") is False
    assert address_answers("auto") is None and address_answers("ray://head:10001") is None
    message = str(join_error(f"127.0.0.1:{port}", ConnectionError("x")))
    assert "no Ray cluster answers" in message and "nothing accepts connections" in message


def test_a_listening_cluster_that_refuses_is_named_with_the_token_fix():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert address_answers(address) is True
        message = str(join_error(address, ConnectionError("Failed"), {"RAY_AUTH_MODE": "disabled"}))
    assert "did not accept this process" in message and "RAY_AUTH_MODE=disabled" in message
    assert "RAY_AUTH_MODE=token" in message and "no Ray cluster answers" not in message


def _ray(*args: str, env: dict[str, str]) -> None:
    assert RAY is not None
    subprocess.run([RAY, *args], env=env, check=True, capture_output=True, timeout=180)


@pytest.fixture
def two_nodes(tmp_path):
    """A head started as a user starts one, where a local Ray has run before and left its token
    in ``~/.ray/auth_token`` (no RAY_AUTH_MODE: the head turns tokens on), and a second node
    joined as docs/scaling.md says (RAY_AUTH_MODE=token); both stopped afterwards (``ray stop
    --force``: every Ray process of this machine)."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    user = {**env, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        _ray("start", "--head", "--num-cpus=1", f"--port={port}", "--include-dashboard=false",
             env=user)  # fmt: skip
        _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
             env={**user, "RAY_AUTH_MODE": "token"})  # fmt: skip
        yield f"127.0.0.1:{port}", user
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_two_node_cluster_from_ray_start_runs_the_study_with_the_process_numbers(
    two_nodes, tmp_path
):
    address, env = two_nodes
    cfg = ReproduceConfig(
        zoo=tiny_zoo_config(tmp_path, ("signs", "textures")),
        sweep={
            "task_counts": [2],
            "scenarios": ["sum-rate"],
            "links": ["snr"],
            "k_values": [1],
            "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
            "analysis": {"samples": 4, "probes": 1},
            "lambda_grid": [0.0, 0.5],
        },
    )
    cache = tmp_path / "cache"
    build_pool(cfg, cache, progress=False)
    config = tmp_path / "study.yaml"
    config.write_text(cfg.model_dump_json())

    def reproduce(out: str, *flags: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "rmtllmf", "reproduce", "--config", str(config),
                "--cache", str(cache), "--out", str(tmp_path / out), *flags]  # fmt: skip
        return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)

    done = reproduce("cluster", "--executor", "ray", "--address", address, environ=env)
    assert done.returncode == 0, done.stderr[-2000:]
    local = reproduce("process", "--workers", "2", environ=env)
    assert local.returncode == 0, local.stderr[-2000:]
    ran = stored_numbers(tmp_path / "cluster")
    assert len(ran) >= 8 and ran == stored_numbers(tmp_path / "process")
    refused = reproduce(
        "refused", "--executor", "ray", "--address", address,
        environ={**env, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert refused.returncode == 2
    assert "did not accept this process" in refused.stderr, refused.stderr[-2000:]
    assert "RAY_AUTH_MODE=disabled" in refused.stderr
