"""Property-based tests of every public entry point (hypothesis): model parameters, prompts,
strings at every place one is passed, token ids, embedding and multimodal buffers, per-run
options, chat messages and tools, chat templates, function tools, CLI arguments.

Each input either works as documented or raises a documented exception (rkllm.RKLLMError,
ParamError / ValueError, TypeError) that names the problem; any other exception type fails
the property. Each example gets a fresh model (so a failure blames the example that caused
it), and after the call that model must answer exactly as a fresh one does.
Buffers that may be read out of bounds (finding 1) go through a child interpreter, so that a
crash fails its test only. ``@example`` rows are the reproductions of the findings.
"""

from __future__ import annotations

import array
import contextlib
import io
import os
import string
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_support import (
    PROMPT,
    REF_TOKENS,
    SCALE,
    assert_usable,
    load,
    reference,
    run_child,
    sim_environment,
)

import rkllm
from rkllm.chat import ChatSession, ChatTemplate

DOCUMENTED = (rkllm.RKLLMError, ValueError, TypeError)
EMBED_SIZE = 128  # the demo model's embedding width (docs/simulator.md)


def budget(n: int) -> Any:
    """hypothesis settings: n examples (times RKLLM_STRESS), no deadline (a loaded machine),
    no example database written into the tree."""
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def env() -> Iterator[None]:
    with sim_environment():
        yield


@pytest.fixture(scope="module")
def ref(env: None) -> str:
    return reference()


@pytest.fixture(scope="module")
def vocab(env: None) -> int:
    with load() as model:
        return model.logits(PROMPT).cols


def outcome(call: Callable[[], object]) -> BaseException | None:
    """None if ``call`` worked, the exception if it raised a documented one; any other
    exception propagates (and fails the property)."""
    try:
        call()
    except DOCUMENTED as exc:
        return exc
    return None


def refused(exc: BaseException | None, *names: str, kind: type[BaseException] = Exception
            ) -> None:
    """The call was refused with a ``kind`` exception naming one of ``names``."""
    assert exc is not None, f"accepted, but should have been refused (naming {names[0]})"
    assert isinstance(exc, kind), f"{type(exc).__name__} {exc}, expected {kind.__name__}"
    assert any(n in str(exc) for n in names), f"the error does not name {names[0]}: {exc}"


# ---- strategies ----------------------------------------------------------------------------

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # NUL and lone surrogates too
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
BAD_CHAR = st.sampled_from(["\x00", "\udc80", "\udcff", "\ud800", "\udfff"]) | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF)
BAD_TEXT = st.builds(lambda a, bad, b: a + bad + b, ANY_TEXT, BAD_CHAR, ANY_TEXT)
HUGE_TEXT = st.integers(0, 200_000).map(lambda n: "word " * n)
NAME = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
WILD = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
                 st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT,
                 st.lists(st.integers(-2, 9), max_size=3), st.binary(max_size=4))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)


def clean(text: str) -> bool:
    """Text that can be passed to C unchanged: no NUL, no lone surrogate."""
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# ---- model parameters ----------------------------------------------------------------------

PARAM_NAMES = [s.name for s in rkllm.params.MODEL_PARAMS] + [
    "extend_param", "model_path", "is_async", "bogus"]


@budget(60)
@given(params=st.dictionaries(st.sampled_from(PARAM_NAMES), WILD | st.dictionaries(
    st.sampled_from(PARAM_NAMES), WILD, max_size=2), max_size=4),
    abi=st.none() | st.sampled_from(["1.1.0", "1.2.0", "1.2.1", "1.3.0", "1.2.3"]) | WILD)
@example(params={}, abi=5)  # finding 12: AttributeError
def test_finding12_model_params_work_or_are_refused(env: None, params: dict[str, Any],
                                                    abi: Any) -> None:
    models: list[rkllm.LLM] = []
    exc = outcome(lambda: models.append(rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim",
                                                  abi=abi, **params)))
    if exc is None:
        with models[0] as model:
            outcome(lambda: model.complete(PROMPT, max_new_tokens=4))
            assert not model.is_running
    else:
        nested = params.get("extend_param")
        names = [*params, *(nested if isinstance(nested, dict) else ()), "abi", "release"]
        assert any(str(n) in str(exc) for n in names), f"the error names no argument: {exc}"


# ---- prompts and every other string --------------------------------------------------------

@budget(100)
@given(prompt=ANY_TEXT | BAD_TEXT | HUGE_TEXT)
@example("0\x000")  # finding 6: answered for "0"
@example("x\udc80")  # finding 6: went through as a raw byte
@example("x\ud800")  # finding 6: UnicodeEncodeError
def test_finding6_prompt_text(env: None, ref: str, prompt: str) -> None:
    with load() as llm:
        exc = outcome(lambda: llm.complete(prompt, max_new_tokens=8))
        if not clean(prompt):
            refused(exc, "prompt", kind=ValueError)
        assert_usable(llm, ref, f"prompt {prompt[:60]!r}")


def _chat_turn(llm: rkllm.LLM, system: str) -> None:
    session = ChatSession(llm, system)
    try:
        session.send("Hi", stream=False, max_new_tokens=4)
    finally:
        session.close()


Site = tuple[Callable[[rkllm.LLM, str], object], tuple[str, ...]]


def _string_sites(tmp: str) -> dict[str, Site]:
    """Each place a string is handed to the runtime: how to pass ``s`` there, and the names
    an error about it may use."""
    lib = rkllm.sim.library_path()
    demo = rkllm.sim.demo_model_path()
    return {
        "role": (lambda m, s: m.complete(PROMPT, role=s, max_new_tokens=4), ("role",)),
        "save_prompt_cache": (lambda m, s: m.complete(
            PROMPT, save_prompt_cache=os.path.join(tmp, s), max_new_tokens=4),
            ("save_prompt_cache",)),
        "set_chat_template.system_prompt": (
            lambda m, s: m.set_chat_template(s, "<u>", "</u>"), ("system_prompt",)),
        "set_chat_template.prompt_prefix": (
            lambda m, s: m.set_chat_template("", s, "</u>"), ("prompt_prefix",)),
        "set_chat_template.prompt_postfix": (
            lambda m, s: m.set_chat_template("", "<u>", s), ("prompt_postfix",)),
        "set_function_tools.system_prompt": (
            lambda m, s: m.set_function_tools(s, "[]"), ("system_prompt",)),
        "set_function_tools.tools": (lambda m, s: m.set_function_tools("", s), ("tools",)),
        "set_function_tools.tool_response_str": (
            lambda m, s: m.set_function_tools("", "[]", s), ("tool_response_str",)),
        "ChatSession.system": (lambda m, s: _chat_turn(m, s), ("system",)),
        "message content": (lambda m, s: m.create_chat_completion(
            [{"role": "user", "content": s}], max_tokens=4), ("messages", "content")),
        "runtime path": (lambda m, s: rkllm.LLM(demo, runtime=lib + s).close(), ("runtime",)),
        "model path": (lambda m, s: rkllm.LLM(demo + s, runtime="sim").close(), ("model",)),
    }


@pytest.fixture(scope="module")
def string_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _string_sites(str(tmp_path_factory.mktemp("strings")))


@budget(100)
@given(site=st.sampled_from(sorted(_string_sites("/"))), text=BAD_TEXT)
@example(site="save_prompt_cache", text="a\x00b")  # finding 6: wrote "a"
@example(site="runtime path", text="\x00junk")  # finding 6: loaded the path before the NUL
@example(site="role", text="user\x00junk")
def test_finding6_nul_or_surrogate_refused_everywhere(env: None, ref: str,
                                                      string_sites: dict[str, Any], site: str,
                                                      text: str) -> None:
    with load() as llm:
        call, names = string_sites[site]
        refused(outcome(lambda: call(llm, text)), *names, kind=ValueError)
        assert_usable(llm, ref, f"{site}={text!r}")


# ---- token ids ------------------------------------------------------------------------------

TOKENS = st.one_of(
    st.lists(st.integers(0, 2700), min_size=1, max_size=16),
    st.lists(st.integers(-2**40, 2**40) | st.sampled_from([-1, 2**31 - 1, 2**31, -2**31]),
             max_size=8),
    st.lists(st.one_of(st.booleans(), st.floats(), st.none(), st.text(max_size=2)),
             min_size=1, max_size=3),
    st.integers(), st.text(max_size=4), st.none(), st.just(()))


@budget(100)
@given(tokens=TOKENS)
@example([2**31])  # finding 12: OverflowError
@example([-1])  # finding 12: a negative id reached the runtime
def test_finding12_token_ids(env: None, ref: str, vocab: int, tokens: Any) -> None:
    with load() as llm:
        exc = outcome(lambda: llm.complete(tokens=tokens, max_new_tokens=4))
        ints = isinstance(tokens, list) and bool(tokens) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens)
        if ints and all(0 <= t < vocab for t in tokens):
            assert exc is None, f"valid token ids refused: {exc!r}"
        elif ints and all(0 <= t < 2**31 for t in tokens):
            # outside the vocabulary: the runtime's check (a GenerationError) or ours
            refused(exc, "token", "vocabulary")
        elif ints:
            refused(exc, "tokens", kind=ValueError)  # negative or beyond int32: never the runtime
        else:
            refused(exc, "tokens")
        assert_usable(llm, ref, f"tokens={tokens!r}")


# ---- per-run options ------------------------------------------------------------------------

SAMPLING = ("top_k", "top_p", "temperature", "repeat_penalty", "frequency_penalty",
            "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta")
BOOL_OPTIONS = ("keep_history", "enable_thinking", "chunked")
OPTIONS = st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(1, 64) | WILD,
    "keep_history": st.booleans() | WILD,
    "enable_thinking": st.booleans() | WILD,
    "chunked": st.booleans() | WILD,
    "role": st.sampled_from(["user", "tool"]) | WILD,
    "lora": WILD,
    **{name: st.floats(0, 1) | WILD for name in SAMPLING},
}) | st.dictionaries(NAME, WILD, min_size=1, max_size=2)


@budget(150)
@given(options=OPTIONS)
@example({"max_new_tokens": 2**40})  # finding 12: OverflowError
@example({"keep_history": "no"})  # finding 12: taken as true
@example({"keep_history": 1e-50})  # finding 12: taken as true
@example({"chunked": 5})  # finding 12: taken as true
def test_finding12_run_options(env: None, ref: str, options: dict[str, Any]) -> None:
    with load() as llm:
        opts = dict(options)
        chunked = opts.pop("chunked", False)
        pieces: list[str] = []
        exc = outcome(lambda: pieces.extend(llm.generate(PROMPT, chunked=chunked, **opts)))
        # a flag must be a bool (None: not given; 0 and 1 may pass as bools), max_new_tokens
        # an int >= 1; the error may name whichever wrong option it met first
        wrong = [name for name in BOOL_OPTIONS if name in options and not (
            options[name] is None or isinstance(options[name], bool)
            or (type(options[name]) is int and options[name] in (0, 1)))]
        limit = options.get("max_new_tokens")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            wrong.append("max_new_tokens")
        if wrong:
            refused(exc, *options)
        elif exc is not None:
            assert any(name in str(exc) for name in options) or isinstance(
                exc, rkllm.GenerationError), f"the error names none of {sorted(options)}: {exc}"
        if exc is None and options.get("keep_history"):
            llm.clear_kv_cache()  # the documented way to forget a kept turn
        assert_usable(llm, ref, f"options {options!r}")


# ---- chat: messages, tools, templates -------------------------------------------------------

TOOL = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["get_weather", "lookup"]) | NAME},
    optional={"description": ANY_TEXT, "parameters": JSONISH})})
TOOLS = st.none() | st.lists(TOOL | JSONISH, max_size=3) | JSONISH
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]) | ANY_TEXT},
    optional={"content": ANY_TEXT | JSONISH | st.lists(st.fixed_dictionaries(
        {"type": st.just("text"), "text": ANY_TEXT}), max_size=2),
        "tool_calls": JSONISH})
MESSAGES = st.lists(MESSAGE | JSONISH, max_size=4) | JSONISH
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@budget(100)
@given(messages=MESSAGES, tools=TOOLS, stream=st.booleans())
@example(messages=[{"role": "user", "content": "get_weather"}], tools=WEATHER, stream=False)
@example(messages=[{"role": "user", "content": "hi"}], tools=[{"function": {"name": "f"},
                                                               "type": 5}], stream=False)
def test_finding7_chat_completion_leaves_nothing_behind(env: None, ref: str,
                                                        messages: Any, tools: Any,
                                                        stream: bool) -> None:
    with load() as llm:
        def call() -> None:
            got = llm.create_chat_completion(messages, tools=tools, max_tokens=8, stream=stream)
            if stream:
                for _ in got:
                    pass

        outcome(call)
        assert_usable(llm, ref, f"create_chat_completion({messages!r}, tools={tools!r})")


TEMPLATE = st.builds(ChatTemplate, *[ANY_TEXT] * 6) | ANY_TEXT | JSONISH | st.sampled_from(
    ["chatml", "llama3", "deepseek"])


@budget(80)
@given(system=st.none() | ANY_TEXT | WILD, template=st.none() | TEMPLATE,
       tools=st.none() | st.just(WEATHER) | TOOLS, text=ANY_TEXT)
@example(system=None, template=None, tools=WEATHER, text="get_weather")  # finding 7
def test_finding7_chat_session_templates_and_tools_leave_nothing_behind(
        env: None, ref: str, system: Any, template: Any, tools: Any, text: str) -> None:
    with load() as llm:
        session: ChatSession | None = None

        def chat() -> None:
            nonlocal session
            session = ChatSession(llm, system, template=template, tools=tools)
            session.send(text, stream=False, max_new_tokens=8)

        outcome(chat)
        if session is not None:
            session.close()
        assert_usable(llm, ref, f"a ChatSession (system={system!r}, template={template!r}, "
                                f"tools={tools!r})")


@budget(60)
@given(system=ANY_TEXT | WILD, tools=TOOLS | ANY_TEXT | WILD, response=ANY_TEXT | WILD)
def test_function_tools_work_or_are_refused(env: None, system: Any, tools: Any,
                                            response: Any) -> None:
    with load() as model:
        outcome(lambda: model.set_function_tools(system, tools, response))
        outcome(lambda: model.complete("get_weather", max_new_tokens=8))
        assert not model.is_running


# ---- embeddings and images (finding 1: in a child interpreter) ------------------------------

TYPECODES = "bBhHiIlLqQfd"


def _buffer(kind: str, n: int, typecode: str) -> Any:
    values = [0.25 * (i % 7) for i in range(n)]
    if kind == "list":
        return values
    arr = array.array(typecode, [int(v) for v in values] if typecode not in "fd" else values)
    if kind == "array":
        return arr
    if kind == "memoryview":
        return memoryview(arr)
    return bytes(arr) if kind == "bytes" else bytearray(arr)


def _floats(data: Any) -> int | None:
    """How many float32 values ``data`` holds, or None if it is not float32 data."""
    if isinstance(data, list):
        return len(data)
    if isinstance(data, (bytes, bytearray)):
        return None  # raw bytes are refused, not reinterpreted as float32 (docs/api.md)
    fmt = data.typecode if isinstance(data, array.array) else data.format
    return len(data) if fmt == "f" else None


ROWS = st.integers(1, 3) | st.integers(-2**40, 2**40) | st.integers(0, 20000) | st.sampled_from(
    [0, -1, 2**31, 16000]) | st.none() | st.floats() | st.booleans()
BUFFER = st.builds(_buffer, st.sampled_from(["list", "array", "memoryview", "bytes",
                                             "bytearray"]),
                   st.integers(0, 3 * EMBED_SIZE + 2) | st.sampled_from(
                       [EMBED_SIZE, 2 * EMBED_SIZE, 1]), st.sampled_from(TYPECODES))


def _check_buffer(exc: BaseException | None, data: Any, need: Any, names: tuple[str, ...]
                  ) -> None:
    """``need``: the float count the other arguments ask for (None: they are invalid)."""
    have = _floats(data)
    if have is None or need is None or have < need:
        refused(exc, *names)  # never read past the buffer, never read it as another type
    elif have == need:
        assert exc is None, f"valid input refused: {exc!r}"


def embedding_property(examples: int) -> None:
    """Runs in a child (see test_finding1_*): embeddings / n_embed_tokens of every shape."""
    with load(max_context_len=16384) as llm:
        ref = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=BUFFER, rows=ROWS)
        @example(data=[0.5], rows=16000)  # finding 1: SIGSEGV
        @example(data=array.array("d", [0.5] * EMBED_SIZE), rows=1)  # read as float32
        @example(data=memoryview(array.array("i", [1] * EMBED_SIZE)), rows=1)
        def prop(data: Any, rows: Any) -> None:
            print(f"embeddings: {type(data).__name__}[{len(data)}] rows={rows!r}",
                  file=sys.stderr, flush=True)
            exc = outcome(lambda: llm.complete(embeddings=data, n_embed_tokens=rows,
                                               max_new_tokens=4))
            ok_rows = isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows
            _check_buffer(exc, data, rows * EMBED_SIZE if ok_rows else None,
                          ("embeddings", "n_embed_tokens", "float32"))
            assert_usable(llm, ref, "an embeddings input")

        prop()


def image_property(examples: int) -> None:
    """Runs in a child: image_embeddings / n_image_tokens / n_images / image_size."""
    with load(max_context_len=16384) as llm:
        ref = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text
        size = st.tuples(st.integers(0, 4096), st.integers(0, 4096)) | st.tuples(
            st.integers()) | WILD | st.lists(st.integers(-5, 5), max_size=3)

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=BUFFER, tokens=ROWS, images=ROWS, image_size=size)
        @example(data=[0.5], tokens=16000, images=1, image_size=(1, 1))  # finding 1
        @example(data=[0.5] * EMBED_SIZE, tokens=1, images=1, image_size=(1,))  # IndexError
        @example(data=[0.5] * EMBED_SIZE, tokens=-1, images=1, image_size=(1, 1))  # Overflow
        @example(data=[0.5] * EMBED_SIZE, tokens=1, images=-1, image_size=(1, 1))
        def prop(data: Any, tokens: Any, images: Any, image_size: Any) -> None:
            print(f"image: {type(data).__name__}[{len(data)}] n_image_tokens={tokens!r} "
                  f"n_images={images!r} image_size={image_size!r}", file=sys.stderr,
                  flush=True)
            exc = outcome(lambda: llm.complete(
                "Describe <image> briefly.", image_embeddings=data, n_image_tokens=tokens,
                n_images=images, image_size=image_size, max_new_tokens=4))
            counts = [v for v in (tokens, images)
                      if isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31]
            good_size = isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in image_size)
            names = ("image_embeddings", "n_image_tokens", "n_images", "float32", "image_size")
            if not good_size and len(counts) == 2:
                refused(exc, "image_size")
            elif not good_size:
                refused(exc, *names)  # the error may name whichever problem it met first
            else:
                _check_buffer(exc, data, tokens * images * EMBED_SIZE if len(counts) == 2
                              else None, names)
            assert_usable(llm, ref, "an image input")

        prop()


CHILD = "import sys, test_properties as t; t.{}(int(sys.argv[1])); print('ok')"


@pytest.mark.timeout(300)
def test_finding1_embedding_buffers_never_read_out_of_bounds() -> None:
    run_child(CHILD.format("embedding_property"), timeout=240, args=(str(100 * SCALE),))


@pytest.mark.timeout(300)
def test_finding1_image_buffers_never_read_out_of_bounds() -> None:
    run_child(CHILD.format("image_property"), timeout=240, args=(str(100 * SCALE),))


# ---- token pieces against the whole text ----------------------------------------------------

@budget(60)
@given(prompt=st.text(ANY_CHAR.filter(clean), max_size=20), limit=st.integers(1, 80))
def test_pieces_join_to_the_complete_text_with_raw_tokens(env: None, prompt: str,
                                                          limit: int) -> None:
    """Per-token pieces and complete() agree, also when tokens end inside a character
    (finding 11's family: a trailing U+FFFD dropped by the pieces)."""
    with load() as llm, sim_environment({"RKLLM_SIM_RAW_TOKENS": "1"}):
        results: list[rkllm.Result] = []
        if outcome(lambda: results.append(llm.complete(prompt, max_new_tokens=limit))) is None:
            pieces = list(llm.generate(prompt, max_new_tokens=limit))
            assert "".join(pieces) == results[0].text


# ---- the command line -----------------------------------------------------------------------

FLAG_VALUES = {
    "-n": st.integers(-3, 40).map(str) | ANY_TEXT, "--temperature": st.floats().map(str),
    "--top-k": st.integers(-2**40, 2**40).map(str), "--top-p": st.floats().map(str) | ANY_TEXT,
    "--repeat-penalty": st.floats().map(str), "--frequency-penalty": st.floats().map(str),
    "--presence-penalty": st.floats().map(str),
    "--max-context-len": st.integers(-5, 2**33).map(str), "--system": ANY_TEXT,
    "--runtime": st.sampled_from(["sim", "sim:1.1.0", "sim:1.2.0", "sim:1.2.1"]) | ANY_TEXT,
    "--abi": st.sampled_from(["1.1.0", "1.2.1", "1.3.0", "9.9"]) | ANY_TEXT,
}
CLI_ARGS = st.lists(st.sampled_from(sorted(FLAG_VALUES)).flatmap(
    lambda flag: FLAG_VALUES[flag].map(lambda value: [flag, value]))
    | st.sampled_from([["--verbose"], ["--show-special"]]), max_size=4)


@budget(60)
@given(words=st.lists(ANY_TEXT, min_size=1, max_size=3), options=CLI_ARGS)
@example(words=["0\x000"], options=[])  # finding 6 through the CLI
def test_cli_run_arguments_give_an_answer_or_one_clear_error(env: None, words: list[str],
                                                             options: list[list[str]]) -> None:
    from rkllm.cli import main

    argv = ["run", "demo", *words, *(part for option in options for part in option)]
    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO("")  # no PROMPT word: the prompt is read here
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = stdin
    assert rc in (0, 1, 2), f"rkllm {argv!r} exited {rc}"
    assert "Traceback" not in err.getvalue(), err.getvalue()
    if rc:
        assert err.getvalue().strip(), f"rkllm {argv!r} failed without a message"
    if any(not clean(w) for w in words):
        assert rc != 0, f"rkllm {argv!r}: a prompt with NUL/surrogate answered"
