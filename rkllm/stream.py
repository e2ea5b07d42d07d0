"""From the shim's batches to ``str`` pieces, and how a generation ends.

The shim hands over batches (complete UTF-8 text plus per-token code-point offsets), so a
piece per token is one slice, and a chunk per batch is free. Cancellation: leaving the loop
(``break``), ``close()``, garbage collection of a half-read stream and ``KeyboardInterrupt``
all end the run the same way: the shim aborts the runtime and waits for its last callback,
and the model is ready for the next run. ``close()`` may come from any thread: the reader's
loop then just ends.

(Over 400 lines: a run's state, its reader and the Stream share one lifetime protocol, which
reads best in one place; the result types before them are what a run gives back.)
"""

from __future__ import annotations

import array
import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from types import FrameType, GeneratorType
from typing import Any, cast

from rkllm import _lowlevel as ll
from rkllm.errors import ClosedError, ContextLengthError, GenerationError, RKLLMError

# How long one pull waits before Python gets a chance to see Ctrl-C (signals are handled
# between bytecodes, and the pull runs with the GIL released).
POLL_MS = 50
# How long Ctrl-C waits for the runtime to stop before handing control back; a runtime still
# busy after that (some cannot abort a prefill) is waited for by the model's next call.
INTERRUPT_WAIT_MS = 50


@dataclass(frozen=True)
class Perf:
    """Timing of one run. ``source`` is "runtime" (its own perf stats, 1.2.1+) or "rkllm-cffi"
    (measured by the shim: prefill is the time to the first token, prefill_tokens unknown)."""

    prefill_tokens: int | None
    prefill_ms: float
    generate_tokens: int
    generate_ms: float
    memory_mb: float | None
    source: str

    @property
    def prefill_tokens_per_s(self) -> float | None:
        if not self.prefill_tokens or self.prefill_ms <= 0:
            return None
        return self.prefill_tokens * 1000.0 / self.prefill_ms

    @property
    def generate_tokens_per_s(self) -> float | None:
        if not self.generate_tokens or self.generate_ms <= 0:
            return None
        return self.generate_tokens * 1000.0 / self.generate_ms


@dataclass(frozen=True)
class Tensor:
    """A rows x cols float32 matrix (logits or hidden states), row-major in ``data``."""

    data: array.array[float]
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def row(self, i: int) -> memoryview:
        if not -self.rows <= i < self.rows:
            raise IndexError(i)
        i %= self.rows
        return memoryview(self.data)[i * self.cols:(i + 1) * self.cols]

    def view(self) -> memoryview[float]:
        """A 2-D memoryview (``view()[i, j]``; ``numpy.asarray`` accepts it)."""
        return memoryview(self.data).cast("B").cast("f", [self.rows, self.cols])


@dataclass(frozen=True)
class Result:
    """A whole run: its text, why it ended ("stop", "length" or "abort"), its token ids
    and perf."""

    text: str
    finish_reason: str
    token_ids: list[int]
    perf: Perf


def _perf(o: dict[str, Any]) -> Perf:
    from_runtime = bool(o["perf_source"])
    return Perf(
        prefill_tokens=o["prefill_tokens"] if o["prefill_tokens"] >= 0 else None,
        prefill_ms=float(o["prefill_ms"]),
        generate_tokens=int(o["generate_tokens"]),
        generate_ms=float(o["generate_ms"]),
        memory_mb=float(o["memory_mb"]) if from_runtime else None,
        source="runtime" if from_runtime else "rkllm-cffi",
    )


# A prompt's token count is not known before the run (the runtime has no tokenizer call), so
# a failed run's prompt is measured by this rule of thumb (bytes of UTF-8 per token).
BYTES_PER_TOKEN = 4


def run_error(request: Any, context_length: int, o: dict[str, Any]) -> GenerationError:
    """The exception for a run the runtime failed: ContextLengthError when the input most
    likely does not fit the context, else GenerationError; with the runtime's reason when
    the shim has it."""
    rc = o["runtime_rc"]
    # the runtime's own reason, when the shim's outcome carries one (a text field)
    reason = next((o[n] for n in ll.OUTCOME_TEXT_FIELDS if o[n]), None)
    what = "the runtime reported an error during generation" + (
        f" (rkllm_run returned {rc})" if rc else "")
    if request.prompt is None or context_length <= 0:
        return GenerationError(what, code=rc or None, runtime_message=reason)
    estimate = -(-len(request.prompt.encode("utf-8")) // BYTES_PER_TOKEN)
    estimate += (request.n_image_tokens or 0) * (request.n_image or 1)
    fits = (f"the prompt is about {estimate} tokens (estimated from its length) and the "
            f"context holds {context_length} (max_context_len)")
    if estimate >= context_length:
        return ContextLengthError(
            f"the prompt does not fit the context: {fits}; shorten it or load the model with "
            f"a larger max_context_len ({what})", n_tokens=estimate, limit=context_length,
            estimated=True, code=rc or None, runtime_message=reason)
    return GenerationError(f"{what}; {fits}", code=rc or None, runtime_message=reason)


class _Run:
    """One run's state, shared by a Stream and its generator (the generator never refers to
    the Stream, so dropping either one ends the run at once, without waiting for the GC).
    It is the session's owner for ll.Model (see there): ``ended`` set means "let go", and
    :meth:`holds` says whether anyone can still read the run."""

    def __init__(self, model: ll.Model, request: Any, *, limit: int, context_length: int,
                 collect: bool) -> None:
        # held while the run ends (or its arrays are read): a second end, e.g. the reader's
        # own after a close() from another thread, waits for the outcome of the first
        self._ending = threading.RLock()
        self.ended = False
        self.model = model  # held: the model outlives every run it started
        self.request = request
        self.limit = limit  # effective max_new_tokens (<= 0: none known)
        self.context_length = context_length
        self.collect = collect
        self.array_kind = request.mode
        self.parts: list[str] = []
        self.ids: list[int] = []
        self.array: Tensor | None = None
        self.outcome: dict[str, Any] | None = None
        self.reader: weakref.ReferenceType[GeneratorType[str, None, None]] | None = None
        self._stop_reader: Callable[[], None] | None = None

    def holds(self) -> bool:
        """Whether the run can still be read: not ended, and its generator (once one was
        made) not finished. A generator that an interrupt stopped before its ``try`` (its
        first lines) has finished without ending the run, while a traceback may still hold
        the run: such a run is let go, and the model's next call ends it."""
        if self.ended:
            return False
        reader = self.reader
        if reader is None:
            return True
        gen = reader()
        return gen is not None and gen.gi_frame is not None

    def read(self, chunked: bool) -> Generator[str, None, None]:
        """The run's pieces, as a generator that ends the run when it stops."""
        gen, self._stop_reader = _reader(self, chunked)
        self.reader = weakref.ref(cast("GeneratorType[str, None, None]", gen))
        return gen

    def end(self, timeout_ms: int = 60000) -> None:
        """Ends the session (aborting a run still going); idempotent, from any thread. With a
        short timeout a runtime slow to stop is left to the model (its next call waits)."""
        with self._ending:
            if self.ended:
                return
            if self._stop_reader is not None:
                self._stop_reader()  # the reader pulls no more: the session is going away
            try:  # model.end sets ``ended`` (under the model's lock: see there)
                outcome = self.model.end(self, timeout_ms)
            except ClosedError:
                outcome = None
            except GenerationError:
                if timeout_ms >= 60000:
                    raise
                outcome = None
            if outcome is not None or self.outcome is None:
                self.outcome = outcome

    def wait_for_reader(self) -> None:
        """After an end from outside the reader (``Stream.close()`` in another thread): waits
        until a reader running in another thread has left its generator, so that no later
        run's batches can reach it. Its pull returns at once after the end and it pulls no
        more (``end`` stopped it), so the wait is short; it is the rare path of a close
        from another thread, hence a poll rather than a signal on the per-token path."""
        gen = self.reader() if self.reader is not None else None
        if gen is None or not gen.gi_running or _runs_here(gen):
            return
        while gen.gi_running:
            time.sleep(0.0002)

    def __del__(self) -> None:
        # the last of the Stream and its generator is gone: nobody will read this run
        if not getattr(self, "ended", True):
            with contextlib.suppress(Exception):
                self.end(INTERRUPT_WAIT_MS)

    def keep(self, text: str) -> None:
        """Keeps a batch's text and token ids when collecting (for Stream.result)."""
        if self.collect:
            self.parts.append(text)
            self.ids.extend(self.model.pull_ids())

    def finish(self) -> None:
        """After the last batch: keep the arrays, end the session, report a failed run."""
        with self._ending:  # the arrays live until the end: no end in between
            if self.array_kind != ll.MODE_GENERATE and not self.ended:
                got = self.model.array(self.array_kind)
                if got is not None:
                    self.array = Tensor(*got)
            self.end()
        o = self.outcome
        if o is not None and o["status"] == ll.RUN_ERROR:
            raise run_error(self.request, self.context_length, o)

    @property
    def finish_reason(self) -> str | None:
        o = self.outcome
        if o is None:
            return "abort" if self.ended else None
        status = o["status"]
        if status == ll.RUN_LENGTH or (status == ll.RUN_FINISHED and 0 < self.limit
                                       <= o["n_tokens"]):
            return "length"
        if status == ll.RUN_FINISHED:
            return "stop"
        if status == ll.RUN_ABORTED:
            return "abort"
        return "error"


def _split(text: str, ends: list[int]) -> list[str]:
    """The one place where a batch becomes pieces: one per token that completed a character
    (``ends`` are code-point offsets; equal neighbours mean a token that completed none)."""
    return [text[a:b] for a, b in zip([0, *ends], ends) if a != b]


def _ended(timeout_ms: int) -> tuple[str, list[int], bool]:
    """The pull of a reader whose run was ended from outside."""
    raise ClosedError("the stream was closed")


def _runs_here(gen: GeneratorType[str, None, None]) -> bool:
    """Whether the running generator ``gen`` runs in this thread (it is on our stack)."""
    frame = gen.gi_frame
    f: FrameType | None = sys._getframe()
    while f is not None:
        if f is frame:
            return True
        f = f.f_back
    return False


def _reader(run: _Run, chunked: bool
            ) -> tuple[Generator[str, None, None], Callable[[], None]]:
    """The run's pieces as a generator, and what stops it pulling: an end from another
    thread swaps its pull (a closure cell, read per batch as a local would be: no extra work
    per token) for one that raises, so the reader never pulls a session that is gone or a
    later run's batches; its loop then just ends."""
    pull = _ended if run.ended else run.model.pull

    def pieces() -> Generator[str, None, None]:
        keep = run.keep
        whole = chunked
        try:
            try:
                while True:
                    text, ends, done = pull(POLL_MS)
                    if ends:
                        keep(text)
                        if not whole:
                            yield from _split(text, ends)
                        elif text:
                            yield text
                    if done:
                        break
            except RKLLMError:
                if not run.ended:
                    raise
                return  # ended from outside (Stream.close in another thread): not an error
            run.finish()
        except KeyboardInterrupt:
            run.end(INTERRUPT_WAIT_MS)
            raise
        finally:
            run.end()

    def stop() -> None:
        nonlocal pull
        pull = _ended

    return pieces(), stop


class Stream:
    """The pieces of one generation, as an iterator of ``str`` (one per token, or one per
    batch with ``chunked=True``). The run starts when the stream is made (by
    :meth:`rkllm.core.CoreLLM.generate` or ``start``); iterate it once.

    After the loop: :attr:`finish_reason`, :attr:`perf`, :attr:`n_tokens`, :meth:`result`.
    For event loops: :meth:`fileno` and :meth:`read_nowait`. The stream holds its model:
    the model is not freed before the stream is.
    """

    def __init__(self, model: ll.Model, request: Any, *, limit: int = -1,
                 context_length: int = 0, chunked: bool = False, collect: bool = False) -> None:
        self._gen: Generator[str, None, None] | None = None  # held when used by next()
        self._looped = False  # __iter__ gave a generator to a loop: it owns the run
        self._chunked = chunked
        run = _Run(model, request, limit=limit, context_length=context_length,
                   collect=collect)
        self._run = run
        try:
            model.start(request, run)
        except BaseException:
            # an interrupt after the shim started the run (the session is ours) must not
            # leave it going; a refused start (busy, bad input) ends nothing of another owner
            run.end(INTERRUPT_WAIT_MS)
            raise

    def __iter__(self) -> Iterator[str]:
        if self._gen is not None:
            return self._gen
        if self._looped:
            raise RuntimeError("a Stream can be iterated only once")
        gen = self._run.read(self._chunked)
        self._looped = True
        return gen

    def __next__(self) -> str:
        if self._gen is None:
            if self._looped:
                raise RuntimeError("this Stream is already being iterated")
            self._gen = self._run.read(self._chunked)
        return next(self._gen)

    def close(self) -> None:
        """Stops the run (if still going), waits for the runtime to let go; idempotent. Any
        thread may call it: a loop reading the stream in another thread then ends normally
        (no exception; finish_reason "abort", or how the run ended if it already had)."""
        self._run.end()
        self._run.wait_for_reader()

    def cancel(self, wait_ms: int = INTERRUPT_WAIT_MS) -> None:
        """Aborts the run and ends it, waiting at most ``wait_ms`` for the runtime (one that
        is slow to stop is waited for by the model's next call instead): for event loops,
        which must not stall."""
        self._run.end(wait_ms)  # its first step marks the run let go (see _Run.end)
        self._run.wait_for_reader()

    def abort(self) -> None:
        """Asks the runtime to stop; the loop then ends with finish_reason "abort". Safe
        from any thread."""
        if not self._run.ended:
            try:
                self._run.model.abort()
            except ClosedError:
                pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a generator handed to a for loop ends the run itself when the loop lets go of it;
        # otherwise (next(), read_nowait(), never read) the stream ends it
        if getattr(self, "_run", None) is not None and not self._looped:
            with contextlib.suppress(Exception):
                self.close()

    @property
    def done(self) -> bool:
        return self._run.ended

    @property
    def finish_reason(self) -> str | None:
        """"stop", "length" or "abort" once the stream has ended, else None."""
        return self._run.finish_reason

    @property
    def perf(self) -> Perf | None:
        o = self._run.outcome
        return None if o is None else _perf(o)

    @property
    def n_tokens(self) -> int:
        o = self._run.outcome
        return 0 if o is None else int(o["n_tokens"])

    @property
    def tensor(self) -> Tensor | None:
        """The hidden states or logits of a hidden_states/logits run, once it has ended."""
        return self._run.array

    def result(self) -> Result:
        """The whole run (text, finish reason, token ids, perf) once it has ended; for a
        stream started with ``collect=True``."""
        run = self._run
        perf = self.perf
        reason = run.finish_reason
        if perf is None or reason is None:
            if run.model.closed:
                raise ClosedError("the model was closed during the run")
            raise GenerationError("the run ended without the runtime saying how")
        return Result("".join(run.parts), reason, [i for i in run.ids if i >= 0], perf)

    # --- the hook for event loops (rkllm.aio) ---------------------------------------------
    def fileno(self) -> int:
        """An eventfd that is readable whenever :meth:`read_nowait` has something new (or the
        run has ended). Register it with ``loop.add_reader``; do not read it yourself."""
        return self._run.model.event_fd()

    def read_nowait(self) -> list[str] | None:
        """The pieces available now, without blocking ([] if none yet); None once the run
        has ended (then finish_reason/perf are set; a runtime error raises here)."""
        run = self._run
        if run.ended:
            return None
        if self._looped or self._gen is not None:
            raise RuntimeError("this Stream is already being iterated")
        try:
            try:
                text, ends, done = run.model.pull(0)
            except RKLLMError:
                if run.ended:
                    return None  # ended from another thread meanwhile (Stream.close)
                raise
            pieces = []
            if ends:
                run.keep(text)
                pieces = [text] if self._chunked else _split(text, ends)
            if done:
                run.finish()
        except KeyboardInterrupt:
            run.end(INTERRUPT_WAIT_MS)
            raise
        except BaseException:
            run.end()
            raise
        return None if done and not pieces else pieces
