"""The ``rkllm`` command as a whole: its help, aliases, global options and error lines (a
subprocess of the installed command line, on the demo model and the simulated runtime)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from rkllm.cli import main


def rkllm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env["RKLLM_SIM_QUIET"] = "1"
    return subprocess.run([sys.executable, "-m", "rkllm.cli", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_help_has_examples_and_the_footer() -> None:
    r = rkllm("--help")
    assert r.returncode == 0
    assert 'rkllm run demo "Tell me about the sea."' in r.stdout
    assert r.stdout.rstrip().endswith(
        'Use "rkllm COMMAND --help" for more information about a command.')
    assert "list (ls)" in r.stdout and "info (show)" in r.stdout


def test_help_verb_is_the_help_of_the_command() -> None:
    assert rkllm("help").stdout == rkllm("--help").stdout
    for topic in (["run"], ["runtime", "pull"], ["ls"]):
        r = rkllm("help", *topic)
        assert r.returncode == 0 and r.stdout == rkllm(*topic, "--help").stdout
    assert "usage: rkllm run " in rkllm("help", "run").stdout
    r = rkllm("help", "frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr


def test_aliases_do_what_their_verbs_do() -> None:
    assert rkllm("show", "demo").stdout == rkllm("info", "demo").stdout != ""
    ls, listed = rkllm("ls", "--json"), rkllm("list", "--json")
    assert ls.returncode == listed.returncode == 0 and ls.stdout == listed.stdout


@pytest.mark.parametrize("where", ["before", "after", "nested"])
def test_debug_before_or_after_the_verb_shows_the_traceback(where: str) -> None:
    verb = ["sim", "path", "--abi", "0.5"]
    args = {"before": ["--debug", *verb], "after": ["sim", "--debug", "path", "--abi", "0.5"],
            "nested": [*verb, "--debug"]}[where]
    r = rkllm(*args)
    assert r.returncode == 1 and "Traceback" in r.stderr
    last = r.stderr.rstrip().splitlines()[-1]  # the exception, as Python prints it
    assert re.match(r"[\w.]*Error: .*'0\.5'", last), last


def test_run_accepts_debug_after_the_verb() -> None:
    a = rkllm("run", "--debug", "demo", "hi", "-n", "5", "--top-k", "1")
    b = rkllm("--debug", "run", "demo", "hi", "-n", "5", "--top-k", "1")
    c = rkllm("run", "demo", "hi", "--debug", "-n", "5", "--top-k", "1")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + c.stderr
    assert a.stdout == b.stdout == c.stdout != ""
    r = rkllm("run", "--debug", "demo", "hi", "--top-p", "3")
    assert r.returncode == 1 and "Traceback" in r.stderr and "top_p" in r.stderr


def test_a_user_error_is_one_line_naming_no_exception_type() -> None:
    r = rkllm("sim", "path", "--abi", "0.5")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("rkllm: error: ") and "release '0.5'" in r.stderr
    assert "ValueError" not in r.stderr and "Traceback" not in r.stderr


def test_main_in_process_returns_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "path", "--abi", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("rkllm: error: ")
    assert main(["help", "sim"]) == 0
    assert "usage: rkllm sim" in capsys.readouterr().out
    assert main([]) == 2  # no verb: the help, as a usage error
    assert "Use \"rkllm COMMAND --help\"" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "verb", "text"), [
    (["run", "demo", "hi", "--frob"], "rkllm run", "unrecognized arguments: --frob"),
    (["run"], "rkllm run", "the following arguments are required: MODEL"),
    (["run", "demo", "-n", "x"], "rkllm run", "invalid int value: 'x'"),
    (["runtime", "pull", "1.3.0", "--frob"], "rkllm runtime pull", "unrecognized arguments"),
    (["frob"], "rkllm", "invalid choice: 'frob'"),
])
def test_a_usage_error_is_one_line_naming_the_verb(args: list[str], verb: str,
                                                   text: str) -> None:
    r = rkllm(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"{verb}: error: ") and text in r.stderr
    assert r.stderr.rstrip().endswith(f"(see: {verb} --help)")
