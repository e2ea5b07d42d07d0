"""`rkllm serve` through the real `ollama` client, on the simulator; pulls from the local
test hub (tests/fakehub.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ollama = pytest.importorskip("ollama")
sys.path.insert(0, os.path.dirname(__file__))
from fakehub import FakeHub  # noqa: E402
from serve_support import ServeProcess  # noqa: E402

REPO = "acme/Demo-rk3588"
QUESTION = [{"role": "user", "content": "Tell me about the river"}]


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    from rkllm import sim

    with FakeHub() as server:
        server.add_commit(REPO, {"demo-rk3588.rkllm": Path(sim.demo_model_path()).read_bytes(),
                                 "README.md": b"# demo\n"})
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("srv")
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--max-loaded", "2"], tmp,
                      env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf")}) as srv:
        yield srv


@pytest.fixture
def client(server: ServeProcess) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_root_and_version(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/").text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_chat_stream_and_not(client: ollama.Client) -> None:
    whole = client.chat(model="demo", messages=QUESTION, options={"num_predict": 20})
    assert isinstance(whole, ollama.ChatResponse) and whole.done
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == 20 and whole.done_reason == "length"
    parts = list(client.chat(model="demo:latest", messages=QUESTION, stream=True,
                             options={"num_predict": 20}))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].prompt_eval_count and parts[-1].total_duration


def test_think_puts_the_reasoning_apart(client: ollama.Client, server: ServeProcess) -> None:
    """think=true: the runtime's enable_thinking, and the reasoning in message.thinking
    (thinking in generate), streamed or not; think=false: enable_thinking off."""
    whole = client.chat(model="demo", messages=QUESTION, think=True,
                        options={"temperature": 0})
    assert whole.message.thinking and whole.message.content
    assert "<think>" not in whole.message.content + whole.message.thinking
    assert server.trace("rkllm_run")[-1]["args"]["rkllm_input"]["enable_thinking"] is True
    parts = list(client.chat(model="demo", messages=QUESTION, think=True, stream=True,
                             options={"temperature": 0}))
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    plain = client.chat(model="demo", messages=QUESTION, think=False,
                        options={"temperature": 0})
    assert not plain.message.thinking and plain.message.content
    assert server.trace("rkllm_run")[-1]["args"]["rkllm_input"]["enable_thinking"] is False
    gen = client.generate(model="demo", prompt="Tell me about the river", think=True,
                          options={"temperature": 0})
    assert gen.thinking and gen.response and "<think>" not in gen.response
    with pytest.raises(ollama.ResponseError, match="think"):
        client.chat(model="demo", messages=QUESTION, think="high")  # type: ignore[arg-type]


def test_chat_tools(client: ollama.Client) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    got = client.chat(model="demo", tools=[get_weather], messages=[
        {"role": "user", "content": "What does get_weather say for Paris?"}])
    assert [c.function.name for c in got.message.tool_calls or []] == ["get_weather"]
    assert "<tool_call>" not in (got.message.content or "")


def test_generate_with_system_and_options(client: ollama.Client) -> None:
    a = client.generate(model="demo", prompt="Tell me about the river",
                        options={"num_predict": 10, "temperature": 0})
    b = client.generate(model="demo", prompt="Tell me about the river",
                        options={"num_predict": 10, "top_k": 1})
    assert isinstance(a, ollama.GenerateResponse) and a.response == b.response and a.response
    c = client.generate(model="demo", prompt="Tell me about the river", system="Be brief.",
                        options={"num_predict": 10, "top_k": 1})
    assert c.response and c.eval_count == 10
    streamed = "".join(p.response for p in client.generate(
        model="demo", prompt="Tell me about the river", stream=True,
        options={"num_predict": 10, "top_k": 1}))
    assert streamed == b.response


def test_errors_in_ollama_shape(client: ollama.Client, server: ServeProcess) -> None:
    with pytest.raises(ollama.ResponseError) as nf:
        client.chat(model="nope", messages=QUESTION)
    assert nf.value.status_code == 404 and "nope" in nf.value.error
    with pytest.raises(ollama.ResponseError) as fmt:
        client.chat(model="demo", messages=QUESTION, format="json")
    assert fmt.value.status_code == 400 and "format" in fmt.value.error
    with pytest.raises(ollama.ResponseError, match="min_p"):
        client.generate(model="demo", prompt="hi", options={"min_p": 0.05})
    # mirostat is the runtime's own (per request from 1.3.0)
    client.generate(model="demo", prompt="hi", options={"mirostat": 2, "mirostat_tau": 4.0,
                                                        "num_predict": 2})
    sampling = server.trace("rkllm_run")[-1]["args"]["rkllm_infer_params"]["sampling_params"]
    assert (sampling["mirostat"], sampling["mirostat_tau"]) == (2, 4.0)
    with pytest.raises(ollama.ResponseError, match="mirostat"):
        client.generate(model="demo", prompt="hi", options={"mirostat": 3})
    bad = httpx.post(server.url + "/api/chat", content=b"{not json")
    assert bad.status_code == 400 and list(bad.json()) == ["error"]


def test_list_ps_show(client: ollama.Client) -> None:
    client.generate(model="demo", prompt="hi", options={"num_predict": 2})
    names = [m.model for m in client.list().models]
    assert "demo" in names
    running = client.ps().models
    assert [m.model for m in running] == ["demo"] and running[0].expires_at is not None
    shown = client.show("demo")
    assert shown.details is not None and shown.details.format == "rkllm"
    assert shown.modelinfo and shown.modelinfo["rkllm.max_context_len"] == 16384


def test_embed(client: ollama.Client) -> None:
    got = client.embed(model="demo", input=["the river", "the sea"])
    assert len(got.embeddings) == 2 and len(got.embeddings[0]) == 128
    assert got.embeddings[0] != got.embeddings[1]
    legacy = client.embeddings(model="demo", prompt="the river")
    assert legacy.embedding == pytest.approx(got.embeddings[0], abs=1e-6)


def test_pull_chat_delete(client: ollama.Client, hub: FakeHub) -> None:
    with pytest.raises(ollama.ResponseError) as before:
        client.chat(model=REPO, messages=QUESTION)
    assert before.value.status_code == 404  # a request never downloads by itself
    progress = list(client.pull(REPO, stream=True))
    assert all(isinstance(p, ollama.ProgressResponse) for p in progress)
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in progress)
    assert REPO + ":demo-rk3588.rkllm" in [m.model for m in client.list().models]
    got = client.chat(model=REPO, messages=QUESTION, options={"num_predict": 5})
    assert got.message.content and got.eval_count == 5
    assert {m.model for m in client.ps().models} == {"demo", REPO}  # two loaded (--max-loaded 2)
    assert client.delete(REPO).status == "success"
    assert REPO + ":demo-rk3588.rkllm" not in [m.model for m in client.list().models]
    assert REPO not in {m.model for m in client.ps().models}  # unloaded first
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(REPO)
    assert gone.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("acme/absent")
    assert "acme/absent" in missing.value.error


def test_keep_alive_zero_unloads(client: ollama.Client) -> None:
    client.generate(model="demo", prompt="hi", options={"num_predict": 2})
    assert "demo" in [m.model for m in client.ps().models]
    client.generate(model="demo", keep_alive=0)  # Ollama's way to unload
    assert "demo" not in [m.model for m in client.ps().models]
    client.generate(model="demo")  # and to load
    assert "demo" in [m.model for m in client.ps().models]
