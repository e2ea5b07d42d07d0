"""``rkllm chat MODEL``: an interactive conversation, modelled on ``ollama run``.

At a terminal: a ``>>> `` prompt, streamed answers, ``/`` commands (``/?`` lists them),
``\"\"\"`` for multi-line input, Ctrl-C to stop an answer, Ctrl-D or ``/bye`` to leave. With
standard input from a pipe or file, every line (or ``\"\"\"`` block) is a message and its
answer is printed, with no prompt: scriptable.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any

HELP = """Available commands:
  /set system TEXT          set the system prompt (the conversation so far is kept)
  /set parameter NAME VALUE set a run option (max_new_tokens; sampling on runtime 1.3.0)
  /set verbose | quiet      show or hide timings after each answer
  /show info                the model, runtime and conversation
  /clear                    forget the conversation
  /bye                      leave (also Ctrl-D)
  /?, /help                 this help

Use \"\"\" to begin and end a multi-line message.
Ctrl-C stops an answer; Ctrl-D or /bye leaves.
"""

EXIT_HINT = "Use Ctrl + d or /bye to exit."


def register(sub: Any) -> None:
    from rkllm.cli.run import SAMPLING_OPTIONS

    p = sub.add_parser(
        "chat", help="talk with a model (interactive; or one message per input line)",
        description="Load MODEL and hold a conversation: at a terminal an interactive prompt "
                    "(/? for commands); from a pipe, every line is a message and its answer "
                    "is printed. MODEL: a .rkllm path, REPO[:FILE] (Hugging Face), or 'demo' "
                    "for the simulated demo model.")
    p.add_argument("model", metavar="MODEL", help="a .rkllm file, REPO[:FILE], or 'demo'")
    p.add_argument("--system", help="the system prompt")
    p.add_argument("-n", "--max-new-tokens", type=int, default=None,
                   help="stop each answer after this many tokens")
    for flag, _, kind, text in SAMPLING_OPTIONS:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--template", metavar="NAME",
                   help="the model's chat template when its file does not tell "
                        "(chatml, llama3, deepseek)")
    p.add_argument("--runtime", metavar="LIB",
                   help="librkllmrt.so to use, or 'sim' / 'sim:RELEASE' for the simulated one "
                        "(default: RKLLM_LIBRARY, the bundled runtime, the system's; else sim)")
    p.add_argument("--abi", metavar="RELEASE",
                   help="force the runtime's ABI release (like RKLLM_ABI), e.g. 1.2.1")
    p.add_argument("--verbose", action="store_true",
                   help="print timings (prompt eval, eval) on stderr after each answer")
    p.set_defaults(func=cmd_chat)


class Repl:
    """The conversation loop over one ChatSession; input and output are parameters so the
    same code serves a terminal and a pipe."""

    def __init__(self, session: Any, *, interactive: bool, verbose: bool, load_s: float,
                 stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> None:
        self.session = session
        self.interactive = interactive
        self.verbose = verbose
        self.load_s = load_s
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.failed = False  # an answer failed (the exit code of a scripted chat)

    # ---- input ----------------------------------------------------------------------------
    def _readline(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input."""
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def read_message(self) -> str | None:
        """The next message (a line, or a \"\"\" block); None at end of input."""
        line = self._readline(">>> ")
        if line is None or not line.lstrip().startswith('"""'):
            return line
        text = line.lstrip()[3:]
        if text.rstrip().endswith('"""'):
            return text.rstrip()[:-3]
        lines = [text] if text else []
        while True:
            more = self._readline("... ")
            if more is None:
                break
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                break
            lines.append(more)
        return "\n".join(lines).strip("\n")

    def say(self, text: str) -> None:
        print(text, file=self.stdout if self.interactive else self.stderr, flush=True)

    # ---- commands -------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Runs a /command; False means leave."""
        from rkllm.errors import ParamError

        words = line.split(None, 3)
        name = words[0]
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            self.say(HELP.rstrip())
        elif name == "/clear":
            self.session.reset()
            self.say("Cleared session context")
        elif name == "/show":
            self.say(self.info() if words[1:2] == ["info"] else "Usage: /show info")
        elif name == "/set":
            what = words[1] if len(words) > 1 else ""
            if what == "system" and len(words) > 2:
                self.session.system = line.split(None, 2)[2]
                self.say("Set system message.")
            elif what == "parameter" and len(words) == 4:
                try:
                    key, value = self.set_parameter(words[2], words[3])
                except ParamError as exc:
                    self.say(f"Error: {exc}")
                else:
                    self.say(f"Set parameter '{key}' to '{value}'")
            elif what == "verbose":
                self.verbose = True
                self.say("Set 'verbose' mode.")
            elif what == "quiet":
                self.verbose = False
                self.say("Set 'quiet' mode.")
            else:
                self.say("Usage: /set system TEXT | /set parameter NAME VALUE | "
                         "/set verbose | /set quiet")
        else:
            self.say(f"Unknown command '{name}'. Type /? for help")
        return True

    def set_parameter(self, name: str, text: str) -> tuple[str, Any]:
        """A run option for the following answers, checked as rkllm.LLM checks it."""
        from rkllm import params as P
        from rkllm.errors import ParamError

        llm = self.session.llm
        if name == "max_new_tokens":
            try:
                value: Any = int(text)
            except ValueError:
                raise ParamError(f"max_new_tokens must be an int, got {text!r}") from None
            if value < 1:
                raise ParamError(f"max_new_tokens must be at least 1, got {value}")
        else:
            sampling = {s.name: s for s in P.SAMPLING_PARAMS}
            if name not in sampling:
                raise P.unknown_param(name, llm.family, ["max_new_tokens", *sampling])
            kind = sampling[name].kind
            try:
                value = int(text) if kind == "int" else float(text)
            except ValueError:
                raise ParamError(f"{name} must be a{'n int' if kind == 'int' else ' number'}, "
                                 f"got {text!r}") from None
            P.validate_sampling(llm.family, {name: value}, llm.params)
        self.session.options[name] = value
        return name, value

    def info(self) -> str:
        from rkllm import params as P

        llm = self.session.llm
        rt = llm.runtime
        template = self.session.template
        rows = [
            ("model", llm.model_path),
            ("runtime", f"{rt.release or 'release unknown'} (ABI family {llm.family})"),
            ("device", "simulated runtime (no NPU)" if llm.is_simulator else "NPU"),
            ("library", rt.path),
            ("context", f"{llm.params['max_context_len']} tokens"),
            ("history", "kept in the runtime's kv cache" if self.session.uses_kv_cache
             else "the whole conversation rendered each turn"),
            ("template", template.name if template else "the model's own (not known here)"),
            ("system", self.session.system if self.session.system is not None
             else "the model's default"),
            ("turns", str(len(self.session.history))),
        ]
        if self.session.uses_kv_cache and P.family_key(llm.family) >= P.family_key("1.2.1"):
            rows.append(("kv cache", f"{llm.kv_cache_size()[0]} tokens"))
        if self.session.options:
            rows.append(("options", ", ".join(f"{k}={v}" for k, v in
                                              sorted(self.session.options.items()))))
        width = max(len(k) for k, _ in rows) + 2
        return "\n".join(f"  {k:<{width}}{v}" for k, v in rows)

    # ---- answers --------------------------------------------------------------------------
    def answer(self, text: str) -> None:
        from rkllm.cli.output import fail
        from rkllm.cli.run import _report
        from rkllm.errors import RKLLMError

        started = time.perf_counter()
        out = self.stdout
        reply = None
        try:
            reply = self.session.send(text)
            for piece in reply:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # stop this answer (kept as far as it got), not the chat
            if reply is not None:
                reply.close()
        except RKLLMError as exc:  # e.g. a conversation longer than the context: say so, go on
            out.flush()
            fail(exc)
            self.failed = True
            if not self.interactive:
                return
        out.write("\n\n" if self.interactive else "\n")
        out.flush()
        if self.verbose and reply is not None:
            _report(time.perf_counter() - started + self.load_s, self.load_s, reply,
                    self.stderr)
            if self.interactive:
                print(file=self.stderr)
        self.load_s = 0.0

    def loop(self) -> int:
        while True:
            try:
                message = self.read_message()
            except KeyboardInterrupt:
                if not self.interactive:
                    return 130
                print(f"\n{EXIT_HINT}", file=self.stdout, flush=True)
                continue
            if message is None:
                if self.interactive:
                    print(file=self.stdout)
                return 1 if self.failed and not self.interactive else 0
            if not message.strip():
                continue
            if message.startswith("/"):
                if not self.command(message.strip()):
                    return 0
                continue
            self.answer(message)


def cmd_chat(args: argparse.Namespace) -> int:
    import rkllm
    from rkllm.chat import ChatSession
    from rkllm.cli.run import SAMPLING_OPTIONS, _choose_runtime, _resolve_model
    from rkllm.errors import ParamError

    started = time.perf_counter()
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ParamError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    path = _resolve_model(args.model)
    params = {name: getattr(args, name) for _, name, _, _ in SAMPLING_OPTIONS
              if getattr(args, name) is not None}
    runtime = _choose_runtime(args)
    options = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    with rkllm.LLM(path, runtime=runtime.path, abi=args.abi, params=params) as llm, \
            ChatSession(llm, args.system, template=args.template, **options) as session:
        repl = Repl(session, interactive=sys.stdin.isatty(), verbose=args.verbose,
                    load_s=time.perf_counter() - started, stdin=sys.stdin,
                    stdout=sys.stdout, stderr=sys.stderr)
        if repl.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        return repl.loop()
