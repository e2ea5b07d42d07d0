"""``/api/pull``: a Hugging Face download through rkllm.hub, with Ollama's progress lines.

The download runs in a worker thread (``rkllm.hub.pull``: local first, checksum verified);
meanwhile the size of the partial file in the hub cache is reported every quarter second as
``{"status": "downloading ...", "digest", "total", "completed"}``, then ``verifying`` and
``success``, as Ollama streams a pull.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm.serve.errors import APIError
from rkllm.serve.responses import NDJSON, Out, json_bytes

if TYPE_CHECKING:
    from rkllm.serve.server import Server

POLL_SECONDS = 0.25


def _partial_bytes(repo: str) -> int:
    from rkllm.hub import cache_dir

    blobs = cache_dir() / ("models--" + repo.replace("/", "--")) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def pull_work(server: Server, name: Any, stream: bool) -> Callable[[Out], Awaitable[None]]:
    from rkllm.hub import parse_ref

    ref = parse_ref(name.removesuffix(":latest")) if isinstance(name, str) else None
    if ref is None:
        raise APIError(400, f"cannot pull {name!r}: name a Hugging Face repository as "
                            f"owner/name or owner/name:FILE.rkllm", code="invalid_value")

    async def work(out: Out) -> None:
        from rkllm.hub import pull

        if stream:
            await out.start(NDJSON)
            await out.write(json_bytes({"status": "pulling manifest"}) + b"\n")
        task = asyncio.ensure_future(asyncio.to_thread(
            pull, ref.repo, ref.file, progress=False))
        try:
            while stream and not task.done():
                await asyncio.wait({task}, timeout=POLL_SECONDS)
                if not task.done():
                    done = await asyncio.to_thread(_partial_bytes, ref.repo)
                    await out.write(json_bytes({"status": f"downloading {ref.repo}",
                                                "completed": done}) + b"\n")
            result = await task
        except Exception as exc:
            if not stream:
                raise
            from rkllm.serve.errors import from_exception

            await out.error(from_exception(exc))
            return
        if not stream:
            await out.json({"status": "success"})
            return
        digest = "sha256:" + Path(result.path).resolve().name
        await out.write(json_bytes({"status": f"pulling {result.file}", "digest": digest,
                                    "total": result.size, "completed": result.size}) + b"\n")
        await out.write(json_bytes({"status": "verifying sha256 digest"}) + b"\n")
        await out.end(json_bytes({"status": "success"}) + b"\n")

    return work
