"""LiteLLM's Python Router over boards running `rkllm serve`, from litellm_config.yaml.

    BOARD1_URL=http://rock5-a:8080/v1 BOARD2_URL=... BOARD3_URL=... RKLLM_API_KEY=... \
        python examples/fleet/router.py "Why is the sky blue?"

The proxy (`litellm --config litellm_config.yaml`) reads the same file; this builds the same
router in-process (tests/test_fleet.py drives it against three simulated boards).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import yaml  # PyYAML comes with litellm

CONFIG = Path(__file__).with_name("litellm_config.yaml")


def resolve_env(value: Any) -> Any:
    """LiteLLM's `os.environ/NAME` values, as its proxy resolves them."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ[value.split("/", 1)[1]]
    if isinstance(value, dict):
        return {k: resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v) for v in value]
    return value


def make_router(config: Path = CONFIG) -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    from litellm import Router

    data = yaml.safe_load(config.read_text())
    return Router(model_list=resolve_env(data["model_list"]), **data["router_settings"],
                  timeout=data["litellm_settings"]["request_timeout"])


async def main(prompt: str) -> None:
    router = make_router()
    reply = await router.acompletion(model="demo", messages=[{"role": "user", "content": prompt}])
    board = reply._hidden_params["additional_headers"].get("llm_provider-x-rkllm-board")
    print(f"[{board or 'a board'}] {reply.choices[0].message.content}")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Why is the sky blue?"))
