"""``rkllm chat MODEL``: an interactive conversation, modelled on ``ollama run``.

At a terminal: a ``>>> `` prompt, streamed answers wrapped between words at the terminal's
width, ``/`` commands (``/?`` lists them; ``/save`` and ``/load`` keep a conversation as JSON
messages), ``\"\"\"`` for multi-line input, Ctrl-C to stop an answer, Ctrl-D or ``/bye`` to
leave. With standard input from a pipe or file, every line (or ``\"\"\"`` block) is a message
and its answer is printed as it comes, with no prompt: scriptable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import IO, Any

from rkllm.cli.loading import (
    add_model_options,
    context_note,
    load_model,
    print_timings,
    with_context_hint,
)
from rkllm.cli.output import WordWrap

HELP = """Available commands:
  /set system TEXT          set the system prompt (the conversation so far is kept)
  /set parameter NAME VALUE set a run option (max_new_tokens; sampling on runtime 1.3.0)
  /set verbose | quiet      show or hide timings after each answer
  /show info                the model, runtime and conversation
  /show parameters          the run options in effect
  /show system | template   the system prompt; the chat template
  /save FILE                save the conversation (JSON messages)
  /load FILE                continue a saved conversation (or OpenAI-style JSON messages)
  /clear                    forget the conversation
  /bye                      leave (also Ctrl-D)
  /?, /help                 this help

Use \"\"\" to begin and end a multi-line message.
Ctrl-C stops an answer; Ctrl-D or /bye leaves.
"""

EXIT_HINT = "Use Ctrl + d or /bye to exit."
SHOW_USAGE = "Usage: /show info | parameters | system | template"

CHAT_EXAMPLES = """\
examples:
  rkllm chat demo --system "You are a pirate."     then /? lists the commands
  printf 'Hi\\nAnd then?\\n' | rkllm chat demo       one answer per line, scriptable
"""


def register(sub: Any) -> None:

    p = sub.add_parser(
        "chat", help="talk with a model (interactive; or one message per input line)",
        description="Load MODEL and hold a conversation: at a terminal an interactive prompt "
                    "(/? for commands); from a pipe, every line is a message and its answer "
                    "is printed. MODEL: a .rkllm path, REPO[:FILE] (Hugging Face), or 'demo' "
                    "for the simulated demo model.",
        epilog=CHAT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.set_defaults(func=cmd_chat)


class Repl:
    """The conversation loop over one ChatSession; input and output are parameters so the
    same code serves a terminal and a pipe."""

    def __init__(self, session: Any, *, interactive: bool, verbose: bool, load_s: float,
                 stdin: IO[str], stdout: IO[str], stderr: IO[str],
                 given_context: int | None = None) -> None:
        self.session = session
        self.interactive = interactive
        self.wrap = interactive and stdout.isatty()
        self.given_context = given_context  # --max-context-len, for /show info
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
        name, rest = words[0], line[len(words[0]):].strip()
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            self.say(HELP.rstrip())
        elif name == "/clear":
            self.session.reset()
            self.say("Cleared session context")
        elif name == "/show":
            shows = {"info": self.info, "parameters": self.parameters,
                     "system": self.system_prompt, "template": self.template}
            self.say(shows[rest]() if rest in shows else SHOW_USAGE)
        elif name in ("/save", "/load"):
            if not rest:
                self.say(f"Usage: {name} FILE")
            else:
                self.say(self.save(rest) if name == "/save" else self.load(rest))
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
            ("context", context_note(llm, self.given_context)),
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
        return _rows(rows)

    def parameters(self) -> str:
        """The run options in effect: the model's (set when it was loaded) and this chat's."""
        from rkllm import params as P

        loaded = self.session.llm.params
        names = ["max_context_len", "max_new_tokens", *(s.name for s in P.SAMPLING_PARAMS)]
        rows = []
        for name in names:
            if name in self.session.options:
                rows.append((name, f"{self.session.options[name]}  (set in this chat)"))
            elif loaded.get(name) is not None:
                value = loaded[name]
                text = f"{value:.6g}" if isinstance(value, float) else str(value)
                if name == "max_new_tokens" and value == -1:
                    text += "  (no limit: until the model ends its answer or the context is full)"
                rows.append((name, text))
        return "Parameters:\n" + _rows(rows)

    def system_prompt(self) -> str:
        if self.session.system is not None:
            return str(self.session.system)
        template = self.session.template
        if template is not None and template.default_system:
            return f"{template.default_system}  (the model's default)"
        return "No system prompt (the model's own, if it has one)."

    def template(self) -> str:
        t = self.session.template
        if t is None:
            return ("The model file does not tell its chat template; the runtime applies its "
                    "own. Start the chat with --template NAME (chatml, llama3, deepseek) to "
                    "choose one.")
        return (f"Template {t.name!r} (SYSTEM: the system prompt; PROMPT: your message):\n"
                f"{t.system_prefix}{{SYSTEM}}{t.system_postfix}{t.prefix}{{PROMPT}}"
                f"{t.postfix}{{ANSWER}}{t.turn_end}")

    def save(self, path: str) -> str:
        """Writes the conversation as JSON: {"model": ..., "messages": [OpenAI-style]}."""
        messages = self.session.history
        try:
            with open(os.path.expanduser(path), "w", encoding="utf-8") as f:
                json.dump({"model": self.session.llm.model_path, "messages": messages}, f,
                          ensure_ascii=False, indent=2)
                f.write("\n")
        except OSError as exc:
            return f"Error: cannot save to {path}: {exc.strerror or exc}"
        return f"Saved the conversation ({len(messages)} messages) to {path}"

    def load(self, path: str) -> str:
        """Continues the conversation in ``path`` (what /save wrote, or a JSON list of
        messages): it replaces the current one, and the next answer follows on from it."""
        from rkllm.chat import ChatSession

        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            return f"Error: cannot load {path}: {getattr(exc, 'strerror', None) or exc}"
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            return f"Error: {path} holds no list of messages"
        old = self.session
        try:  # checks the messages before it touches the model: on error, old goes on as it was
            new = ChatSession(old.llm, messages=messages, template=old.template, **old.options)
        except (ValueError, TypeError) as exc:  # ParamError; TypeError for a wrong type
            return f"Error: {path}: {exc}"
        old.close()
        self.session = new
        return f"Loaded the conversation ({len(messages)} messages) from {path}"

    # ---- answers --------------------------------------------------------------------------
    def answer(self, text: str) -> None:
        from rkllm.cli.output import fail
        from rkllm.errors import RKLLMError

        started = time.perf_counter()
        # at a terminal, lines break between words (at its width now: it may have changed)
        out: Any = WordWrap(self.stdout, shutil.get_terminal_size().columns) if self.wrap \
            else self.stdout
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
            self._end(out)
            fail(with_context_hint(exc, self.session.llm, chat=True))
            self.failed = True
            if not self.interactive:
                return
        self._end(out)
        self.stdout.write("\n\n" if self.interactive else "\n")
        self.stdout.flush()
        if self.verbose and reply is not None:
            print_timings(time.perf_counter() - started + self.load_s, self.load_s, reply,
                    self.stderr)
            if self.interactive:
                print(file=self.stderr)
        self.load_s = 0.0

    @staticmethod
    def _end(out: Any) -> None:
        if isinstance(out, WordWrap):
            out.end()
        out.flush()

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
    """`rkllm chat`, and `rkllm run` without a prompt at a terminal."""
    from rkllm.chat import ChatSession

    started = time.perf_counter()
    options = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    with load_model(args) as llm, \
            ChatSession(llm, args.system, template=args.template, **options) as session:
        repl = Repl(session, interactive=sys.stdin.isatty(), verbose=args.verbose,
                    load_s=time.perf_counter() - started, stdin=sys.stdin,
                    stdout=sys.stdout, stderr=sys.stderr, given_context=args.max_context_len)
        if repl.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        return repl.loop()


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"  {k:<{width}}{v}" for k, v in rows)
