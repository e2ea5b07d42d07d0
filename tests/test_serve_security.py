"""`rkllm serve` is safe by default: loopback, API key, model references, bounded bodies."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
sys.path.insert(0, os.path.dirname(__file__))
from serve_support import ServeProcess  # noqa: E402

KEY = "s3cret-key"
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_refuses_a_public_address_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RKLLM_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "rkllm.cli", "serve", "demo", "--host",
                           "0.0.0.0", "--port", "9"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode != 0
    assert "--api-key" in done.stderr and "0.0.0.0" in done.stderr


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rkllm import sim

    folder = tmp_path_factory.mktemp("allowed")
    shutil.copy(sim.demo_model_path(), folder / "mine.rkllm")
    (folder / "broken.rkllm").write_bytes(b"not a model at all" * 100)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServeProcess]:
    args = ["demo", "--runtime", "sim:1.3.0", "--api-key", KEY, "--allow-dir",
            str(models_dir), "--max-body", "100000", "--read-only"]
    with ServeProcess(args, tmp_path_factory.mktemp("sec")) as srv:
        yield srv


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_is_needed_and_checked(server: ServeProcess) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT).status_code == 401
    with pytest.raises(ollama.ResponseError) as oerr:
        ollama.Client(host=server.url).list()
    assert oerr.value.status_code == 401
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert good.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]
    assert ollama.Client(host=server.url, headers=auth()).list().models
    # open: Ollama's liveness answer and the health check
    assert httpx.get(server.url + "/").text == "Ollama is running"
    assert httpx.get(server.url + "/health").json()["status"] in ("ready", "busy")
    assert httpx.get(server.url + "/metrics").status_code == 401


@pytest.mark.parametrize("ref", ["../../etc/passwd", "/etc/passwd", "demo/../../etc/passwd",
                                 "~/.ssh/id_rsa", "./x.rkllm"])
def test_model_references_never_reach_arbitrary_paths(server: ServeProcess, ref: str) -> None:
    got = httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                     json={**CHAT, "model": ref})
    assert got.status_code in (403, 404), got.text
    assert set(got.json()["error"]) == {"message", "type", "param", "code"}
    o = httpx.post(server.url + "/api/chat", headers=auth(), json={**CHAT, "model": ref})
    assert o.status_code in (403, 404) and list(o.json()) == ["error"]


def test_absolute_paths_only_inside_allowed_folders(server: ServeProcess,
                                                    models_dir: Path) -> None:
    from rkllm import sim

    outside = httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                         json={**CHAT, "model": sim.demo_model_path()})
    assert outside.status_code == 403 and "path" in outside.json()["error"]["message"]
    inside = httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                        json={**CHAT, "model": str(models_dir / "mine.rkllm")})
    assert inside.status_code == 200, inside.text
    sneaky = httpx.post(server.url + "/v1/chat/completions", headers=auth(), json={
        **CHAT, "model": str(models_dir / ".." / models_dir.name / "mine.rkllm")})
    assert sneaky.status_code == 403


def test_a_model_that_fails_to_load_is_an_error_and_the_server_goes_on(
        server: ServeProcess, models_dir: Path) -> None:
    got = httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                     json={**CHAT, "model": str(models_dir / "broken.rkllm")})
    assert got.status_code == 500 and "load" in got.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                      json=CHAT).status_code == 200


def read_response(s: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += s.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_huge_body_is_refused_without_reading_it(server: ServeProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Length: 104857600\r\n\r\n" + b"{" + b" " * 65536)
        reply = read_response(s)  # answered with 100 MB unsent
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert "larger than the server accepts" in reply

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(50):
            yield b" " * 10000

    got = httpx.post(server.url + "/v1/chat/completions", headers=auth(), content=chunks())
    assert got.status_code == 413 and got.json()["error"]["code"] == "request_too_large"
    assert httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                      json=CHAT).status_code == 200


def test_bad_requests_get_the_api_shape(server: ServeProcess) -> None:
    for body, needle in ((b"{nope", "JSON"), (b"[1, 2]", "object"),
                         (b'{"model": "demo", "messages": "hi"}', "messages"),
                         (b'{"model": 3, "messages": []}', "model"),
                         (b'{"model": "demo", "messages": [], "max_tokens": -1}', "max_tokens")):
        got = httpx.post(server.url + "/v1/chat/completions", headers=auth(), content=body)
        assert got.status_code == 400, (body, got.text)
        assert needle in got.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/nothing", headers=auth()).json()["error"]["type"] == \
        "not_found_error"
    assert httpx.get(server.url + "/api/nothing", headers=auth()).json() == {
        "error": "no route /api/nothing"}


def test_read_only_switches_off_state_changes_and_cors_is_off(server: ServeProcess) -> None:
    for path in ("/api/pull", "/api/delete", "/admin/drain"):
        got = httpx.post(server.url + path, headers=auth(), json={"model": "acme/x"})
        assert got.status_code == 403 and "read-only" in got.json()["error"]
    got = httpx.options(server.url + "/v1/models", headers={
        **auth(), "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in got.headers
