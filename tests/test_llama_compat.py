"""Code written for llama-cpp-python runs on rkllm with only its import and constructor
changed: BODY below is written as that project's README writes its examples, and runs here
against the simulator. Models by name, as in the CLI: ``demo``, ``REPO:FILE`` (the Hugging
Face cache first), and ``LLM.from_pretrained``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakehub import FakeHub

import rkllm
from rkllm.errors import ModelNotFoundError

# as in tests/test_models.py: the client's telemetry routes are not the test hub's business
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# llama-cpp-python:  from llama_cpp import Llama
#                    llm = Llama(model_path="./models/model.gguf", n_ctx=2048)
HEADER = """\
from rkllm import LLM as Llama
llm = Llama("demo", max_context_len=2048)
"""

BODY = '''\
import json

output = llm(
    "Q: Name the planets in the solar system? A: ",  # the prompt
    max_tokens=32,  # at most 32 new tokens (None: up to the end of the context)
    stop=["Q:", "\\n"],  # stop before the model asks a question of its own
    echo=True,  # the prompt comes back in front of the answer
)  # a completion; llm.create_completion(...) is the same
print(json.dumps(output))

for chunk in llm.create_completion("Tell me a story.", max_tokens=12, stream=True):
    print(json.dumps(chunk))

output = llm.create_chat_completion(
    messages=[
        {"role": "system", "content": "You are an assistant who describes rivers."},
        {"role": "user", "content": "Describe the river in detail please."},
    ],
    max_tokens=24,
    seed=1337,
)
print(json.dumps(output))

for chunk in llm.create_chat_completion(
    messages=[{"role": "user", "content": "Tell me about the mountain."}],
    max_tokens=24,
    stop=["."],
    stream=True,
    stream_options={"include_usage": True},
):
    print(json.dumps(chunk))

output = llm.create_chat_completion(
    messages=[
        {"role": "system", "content": "A helpful assistant that calls functions."},
        {"role": "user", "content": "Please call get_weather for Paris."},
    ],
    tools=[{
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=40,
)
print(json.dumps(output))
'''


def _run_script(tmp_path: Path) -> list[dict[str, Any]]:
    script = tmp_path / "llama_style.py"
    script.write_text(HEADER + BODY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env["RKLLM_SIM_QUIET"] = "1"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_llama_cpp_python_script_runs_unchanged(tmp_path: Path) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    outputs = iter(_run_script(tmp_path))
    planets = next(outputs)
    Completion.model_validate(planets)
    text = planets["choices"][0]["text"]
    prompt = "Q: Name the planets in the solar system? A: "
    assert text.startswith(prompt) and text != prompt
    assert "\n" not in text and "Q:" not in text[len(prompt):]
    story = []
    for chunk in outputs:
        assert chunk["object"] == "text_completion"
        story.append(chunk["choices"][0]["text"])
        if chunk["choices"][0]["finish_reason"]:
            assert chunk["choices"][0]["finish_reason"] == "length"
            break
    with rkllm.LLM("demo") as llm:  # the same answers in this process
        assert "".join(story) == llm.complete("Tell me a story.", max_new_tokens=12).text
    river = ChatCompletion.model_validate(next(outputs))
    assert river.choices[0].message.content and river.choices[0].finish_reason == "length"
    mountain = []
    for chunk in outputs:
        typed = ChatCompletionChunk.model_validate(chunk)
        if not typed.choices:  # the usage chunk comes last
            assert typed.usage is not None and typed.usage.completion_tokens >= len(mountain)
            break
        mountain.append(typed.choices[0].delta.content or "")
    assert "." not in "".join(mountain) and "".join(mountain)
    called = ChatCompletion.model_validate(next(outputs))
    assert called.choices[0].finish_reason == "tool_calls"
    tool_calls = called.choices[0].message.tool_calls
    assert tool_calls is not None and tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert next(outputs, None) is None


# ---- models by name ----------------------------------------------------------------------------

@pytest.fixture
def hub(local_hub: FakeHub, quiet_sim: None) -> FakeHub:
    return local_hub


def test_models_by_name_as_in_the_cli(hub: FakeHub, demo_model: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = Path(demo_model).read_bytes()
    hub.add_commit("acme/demo-rk3588", {"demo-rk3588-w8a8.rkllm": data,
                                        "demo-rk3576-w4a16.rkllm": data, "README.md": b"#\n"})
    with rkllm.LLM("demo") as llm:
        assert llm.is_simulator  # the demo model is a simulated one: the simulator runs it
        expected = llm.complete("Hi", max_new_tokens=8).text
    with pytest.raises(ModelNotFoundError, match="matches 2 files"):
        rkllm.LLM.from_pretrained("acme/demo-rk3588", filename="*.rkllm", runtime="sim")
    with rkllm.LLM.from_pretrained("acme/demo-rk3588", filename="*rk3588*.rkllm",
                                   runtime="sim") as llm:
        assert llm.model_path.endswith("demo-rk3588-w8a8.rkllm")
        assert llm.complete("Hi", max_new_tokens=8).text == expected
    # now cached: offline, by REPO:FILE or a glob, with no request to the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    with rkllm.LLM("acme/demo-rk3588:demo-rk3588-w8a8.rkllm", runtime="sim") as llm:
        assert llm.complete("Hi", max_new_tokens=8).text == expected
    with rkllm.LLM.from_pretrained("acme/demo-rk3588", "*w8a8*", runtime="sim") as llm:
        assert llm.model_path.endswith("demo-rk3588-w8a8.rkllm")
    assert len(hub.requests) == before
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        rkllm.LLM("acme/other:x.rkllm", runtime="sim")
