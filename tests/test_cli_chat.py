"""``rkllm chat`` as a subprocess: through a pipe (scriptable) and on a pseudo-terminal
(the prompt, Ctrl-C during an answer and at the prompt, Ctrl-D)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rkllm
from rkllm.chat import ChatSession

Q1 = "Tell me about the river."
Q2 = "And what about the mountain?"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env.update(RKLLM_SIM_QUIET="1", **extra)
    return env


def chat(stdin: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rkllm.cli", "chat", "demo", *args],
                          input=stdin, capture_output=True, text=True, env=_env(**env),
                          timeout=60, check=False)


@pytest.fixture
def session_for(demo_model: str, quiet_sim: None) -> Iterator[Any]:
    """Makes the in-process twin of a CLI chat: same runtime, default params."""
    opened: list[rkllm.LLM] = []

    def make(family: str = "1.3.0", **options: Any) -> ChatSession:
        llm = rkllm.LLM(demo_model, runtime=f"sim:{family}")
        opened.append(llm)
        return ChatSession(llm, **options)

    yield make
    for llm in opened:
        llm.close()


def test_pipe_answers_each_line(family: str, session_for: Any) -> None:
    out = chat(f"{Q1}\n\n{Q2}\n", "-n", "20", "--runtime", f"sim:{family}")
    assert out.returncode == 0, out.stderr
    twin = session_for(family, max_new_tokens=20)
    expected = [twin.send(Q1, stream=False).text, twin.send(Q2, stream=False).text]
    assert out.stdout == "".join(f"{a}\n" for a in expected)  # no prompt, no decoration
    assert ">>>" not in out.stdout + out.stderr


def test_commands_in_a_script(session_for: Any) -> None:
    script = "\n".join([
        Q1, "/clear", Q2,
        '"""first line', "second line", '"""',
        "/set system You are a pirate.", Q1,
        "/set parameter max_new_tokens 3", Q2,
        "/bye", "never answered"]) + "\n"
    out = chat(script, "-n", "20")
    assert out.returncode == 0, out.stderr
    twin = session_for(max_new_tokens=20)
    expected = [twin.send(Q1, stream=False).text]
    twin.reset()
    expected += [twin.send(Q2, stream=False).text,
                 twin.send("first line\nsecond line", stream=False).text]
    twin.system = "You are a pirate."
    expected.append(twin.send(Q1, stream=False).text)
    expected.append(twin.send(Q2, max_new_tokens=3, stream=False).text)
    assert out.stdout.splitlines() == expected
    assert "Cleared session context" in out.stderr and "Set system message." in out.stderr
    assert "Set parameter 'max_new_tokens' to '3'" in out.stderr


def test_set_parameter_is_validated(session_for: Any) -> None:
    script = "\n".join(["/set parameter temperature hot", "/set parameter top_k -1",
                        "/set parameter tempature 0.5", "/set parameter max_new_tokens 0",
                        "/set parameter top_k 1", Q1, "/frobnicate", "/set"]) + "\n"
    out = chat(script, "-n", "10")
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert "temperature must be a number, got 'hot'" in err
    assert "top_k must be between 0 and" in err
    assert "did you mean temperature" in err
    assert "max_new_tokens must be at least 1" in err
    assert "Set parameter 'top_k' to '1'" in err
    assert "Unknown command '/frobnicate'" in err and "Usage: /set" in err
    assert out.stdout == session_for(max_new_tokens=10, top_k=1).send(Q1, stream=False).text \
        + "\n"
    # before 1.3.0 sampling is fixed when the model is loaded
    old = chat("/set parameter temperature 0.5\n", "--runtime", "sim:1.2.1")
    assert "needs RKLLM runtime 1.3.0" in old.stderr


def test_help_and_info() -> None:
    out = chat("/?\n/show info\n", "--runtime", "sim:1.2.1", "--system", "Be kind.")
    assert out.returncode == 0, out.stderr
    assert "/set parameter NAME VALUE" in out.stderr and '"""' in out.stderr
    for text in ("1.2.3 (ABI family 1.2.1)", "simulated runtime (no NPU)", "kv cache",
                 "Be kind.", "demo.rkllm", "context"):
        assert text in out.stderr


def test_verbose_timings_after_each_answer() -> None:
    out = chat(f"{Q1}\n{Q2}\n", "-n", "5", "--verbose")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert sum(line.startswith("max_context_len: ") for line in lines) == 1  # once, at load
    first = subprocess.run([sys.executable, "-m", "rkllm.cli", "--verbose", "chat", "demo",
                            "-n", "5"], input=f"{Q1}\n{Q2}\n", capture_output=True, text=True,
                           env=_env(), timeout=60, check=False)
    assert first.returncode == 0 and first.stderr.count("max_context_len: ") == 1
    assert first.stderr.count("\neval rate:") == 2  # not "prompt eval rate:"
    assert sum(line.startswith("eval rate:") for line in lines) == 2
    assert sum(line.startswith("prompt eval count:") for line in lines) == 2
    assert "finish reason:        length" in out.stderr


def test_a_failed_answer_is_reported_and_the_chat_goes_on() -> None:
    # 1.1.x renders the whole conversation each turn: it outgrows a small context
    script = "".join(f"{Q1} {i}\n" for i in range(8)) + "/clear\n" + Q2 + "\n"
    out = chat(script, "-n", "30", "--runtime", "sim:1.1.0", "--max-context-len", "160")
    assert out.returncode == 1
    assert "rkllm: error:" in out.stderr and "max_context_len" in out.stderr
    assert len(out.stdout.splitlines()) >= 2  # answers before the failure and after /clear


def test_bad_model_is_one_line() -> None:
    out = chat("", "--runtime", "sim", "/nonexistent.rkllm")
    assert out.returncode != 0


# ---- on a terminal ---------------------------------------------------------------------------

class Terminal:
    """``rkllm chat demo`` (or ``argv``) on a pseudo-terminal ``columns`` wide."""

    def __init__(self, *args: str, argv: tuple[str, ...] = ("chat", "demo"), columns: int = 200,
                 **env: str) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
                child_env = {k: v for k, v in _env(**env).items()
                             if k not in ("COLUMNS", "LINES")}  # the terminal tells the width
                os.execve(sys.executable, [sys.executable, "-m", "rkllm.cli", *argv, *args],
                          child_env)
            finally:
                os._exit(127)
        self.buf = b""

    def read_until(self, token: bytes, timeout: float = 20) -> bytes:
        end = time.monotonic() + timeout
        while token not in self.buf:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {token!r} within {timeout}s: {self.buf[-300:]!r}")
            try:
                self.buf += os.read(self.fd, 4096)
            except OSError as exc:  # the child has gone
                raise AssertionError(f"no {token!r}, child gone: {self.buf[-300:]!r}") from exc
        i = self.buf.index(token) + len(token)
        got, self.buf = self.buf[:i], self.buf[i:]
        return got

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def wait(self, timeout: float = 20) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[type[Terminal]]:
    opened: list[Terminal] = []

    def make(*args: str, **kwargs: Any) -> Terminal:
        t = Terminal(*args, **kwargs)
        opened.append(t)
        return t

    yield make  # type: ignore[misc]
    for t in opened:
        t.close()


def test_ctrl_c_stops_the_answer_not_the_chat(terminal: Any) -> None:
    # an endless answer at 20 ms per token
    t = terminal(RKLLM_SIM_TOKEN_US="20000", RKLLM_SIM_IGNORE_EOS="1")
    t.read_until(b">>> ")
    t.type(Q1.encode() + b"\r")
    t.read_until(Q1.encode() + b"\r\n")
    time.sleep(0.3)  # some of the answer
    started = time.monotonic()
    t.type(b"\x03")
    answer = t.read_until(b">>> ")
    assert time.monotonic() - started < 2
    assert len(answer.split()) >= 3  # the part that arrived stays on screen
    # the conversation goes on, with the cut answer in it
    time.sleep(0.2)  # readline is waiting again (a Ctrl-C before that is seen late)
    t.type(b"/show info\r")
    assert b"turns     2" in t.read_until(b">>> ")
    time.sleep(0.2)
    t.type(b"\x03")  # at an empty prompt: how to leave
    assert b"Use Ctrl + d or /bye to exit." in t.read_until(b">>> ")
    t.type(b"\x04")
    assert t.wait() == 0


def test_multiline_and_bye_on_a_terminal(terminal: Any, session_for: Any) -> None:
    t = terminal("-n", "12")
    t.read_until(b">>> ")
    t.type(b'"""one\r')
    t.read_until(b"... ")
    t.type(b'two"""\r')
    answer = t.read_until(b">>> ")
    expected = session_for(max_new_tokens=12).send("one\ntwo", stream=False).text
    assert expected.encode() in answer.replace(b"\r\n", b"\n")
    t.type(b"/bye\r")
    assert t.wait() == 0


def _answer_on(t: Terminal, message: bytes) -> str:
    """Types a message; the answer as printed (lines joined by \\n), up to the blank line
    before the next prompt."""
    t.type(message + b"\r")
    t.read_until(message + b"\r\n")
    answer = t.read_until(b"\r\n\r\n")[:-4].decode().replace("\r\n", "\n")
    t.read_until(b">>> ")
    return answer


def test_answers_wrap_between_words_at_the_terminal_width(terminal: Any,
                                                          session_for: Any) -> None:
    t = terminal("-n", "80", columns=40)
    t.read_until(b">>> ")
    shown = _answer_on(t, Q1.encode())
    expected = session_for(max_new_tokens=80).send(Q1, stream=False).text
    assert len(expected) > 120 and "\n" not in expected
    lines = shown.split("\n")
    assert len(lines) >= 3 and all(len(line) <= 40 for line in lines)
    assert " ".join(lines) == expected  # only spaces became line breaks: no word is cut
    for line, after in zip(lines, lines[1:]):  # each line is as full as the next word allows
        assert len(line) + 1 + len(after.split(" ")[0]) > 40
    t.type(b"/bye\r")
    assert t.wait() == 0


def test_run_without_a_prompt_at_a_terminal_opens_the_chat(terminal: Any,
                                                           session_for: Any) -> None:
    t = terminal("-n", "12", "--top-k", "1", argv=("run", "demo"))
    t.read_until(b">>> ")
    twin = session_for(max_new_tokens=12, top_k=1)
    assert _answer_on(t, Q1.encode()) == twin.send(Q1, stream=False).text
    assert _answer_on(t, Q2.encode()) == twin.send(Q2, stream=False).text
    t.type(b"/bye\r")
    assert t.wait() == 0


def test_show_parameters_system_and_template() -> None:
    script = "\n".join(["/show parameters", "/set parameter top_k 1", "/show parameters",
                        "/show system", "/show template", "/show", "/show bogus"]) + "\n"
    out = chat(script, "-n", "5", "--max-context-len", "1000")
    assert out.returncode == 0, out.stderr
    first, second = out.stderr.split("Set parameter 'top_k' to '1'")
    assert re.search(r"^  max_context_len +1000$", first, re.M)
    assert re.search(r"^  max_new_tokens +5  \(set in this chat\)$", first, re.M)
    assert re.search(r"^  temperature +0\.8$", first, re.M)
    assert re.search(r"^  top_k +40$", first, re.M)
    assert re.search(r"^  top_k +1  \(set in this chat\)$", second, re.M)
    assert "You are a helpful assistant.  (the model's default)" in second
    assert ("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n"
            "<|im_start|>assistant\n{ANSWER}<|im_end|>\n") in second
    assert second.count("Usage: /show info | parameters | system | template") == 2
    assert re.search(r"^  max_new_tokens +-1  \(no limit", chat("/show parameters\n").stderr, re.M)
    out = chat("/show system\n/set system Be brief.\n/show system\n", "--system", "Be kind.")
    assert out.stderr.splitlines() == ["Be kind.", "Set system message.", "Be brief."]


def test_show_on_a_terminal(terminal: Any) -> None:
    t = terminal("--system", "Be kind.")
    t.read_until(b">>> ")
    t.type(b"/show system\r")
    assert t.read_until(b">>> ").endswith(b"Be kind.\r\n>>> ")
    t.type(b"/show parameters\r")
    assert b"Parameters:" in t.read_until(b">>> ")
    t.type(b"\x04")
    assert t.wait() == 0


@pytest.mark.parametrize("family", ["1.1.0", "1.3.0"])
def test_save_then_load_continues_the_conversation(family: str, tmp_path: Any,
                                                   terminal: Any, session_for: Any) -> None:
    saved = tmp_path / "talk.json"
    out = chat(f"{Q1}\n{Q2}\n/save {saved}\n", "-n", "20", "--system", "Be kind.",
               "--runtime", f"sim:{family}")
    assert out.returncode == 0, out.stderr
    assert f"Saved the conversation (5 messages) to {saved}" in out.stderr
    twin = session_for(family, system="Be kind.", max_new_tokens=20)
    a1, a2 = twin.send(Q1, stream=False).text, twin.send(Q2, stream=False).text
    messages = json.loads(saved.read_text())["messages"]
    assert messages == [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": Q1}, {"role": "assistant", "content": a1},
                        {"role": "user", "content": Q2}, {"role": "assistant", "content": a2}]
    # a new chat, at a terminal, picks it up: the next answer follows on from the saved turns
    t = terminal("-n", "20", "--runtime", f"sim:{family}")
    t.read_until(b">>> ")
    t.type(f"/load {saved}\r".encode())
    assert b"Loaded the conversation (5 messages)" in t.read_until(b">>> ")
    after_load = _answer_on(t, b"Why?")
    assert after_load == session_for(family, messages=messages, max_new_tokens=20).send(
        "Why?", stream=False).text
    assert after_load != session_for(family, max_new_tokens=20).send("Why?", stream=False).text
    t.type(b"/show system\r")
    assert b"Be kind.\r\n" in t.read_until(b">>> ")
    t.type(b"/bye\r")
    assert t.wait() == 0


def test_a_bad_load_keeps_the_conversation(tmp_path: Any, session_for: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "wizard", "content": "hi"}]))
    script = "\n".join([Q1, f"/load {tmp_path / 'missing.json'}", f"/load {bad}", "/load",
                        f"/save {tmp_path / 'no-such-dir' / 'x.json'}", Q2]) + "\n"
    out = chat(script, "-n", "20")
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert f"Error: cannot load {tmp_path / 'missing.json'}: No such file" in err
    assert f"Error: {bad}: " in err and "wizard" in err
    assert "Usage: /load FILE" in err and "Error: cannot save to" in err
    twin = session_for(max_new_tokens=20)
    expected = [twin.send(Q1, stream=False).text, twin.send(Q2, stream=False).text]
    assert out.stdout.splitlines() == expected
