"""Chat templates: how a model's conversation is written out, and which one a model uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkllm.errors import ParamError, RKLLMError

if TYPE_CHECKING:
    from rkllm.core import CoreLLM

__all__ = ["TEMPLATES", "ChatTemplate", "detect_template", "resolve_template"]


@dataclass(frozen=True)
class ChatTemplate:
    """How a model's conversation is written out: a system block
    (``system_prefix + text + system_postfix``; ``default_system`` when none is given), a user
    turn (``prefix + text + postfix``), and the end of an answer (``turn_end``).

    ``turn_end`` is what the runtime keeps in its kv cache after an answer: the end-of-turn
    token it generated, without the newline a template writes after it. So a conversation
    rendered in full prefills exactly what ``keep_history`` turns kept, and both give the same
    next answer (the simulator does this; the real runtime's kv cache cannot be read, so this is
    the one consistent choice)."""

    system_prefix: str
    system_postfix: str
    prefix: str
    postfix: str
    turn_end: str
    default_system: str = ""
    name: str = "custom"

    def render_system(self, system: str | None) -> str:
        text = self.default_system if system is None else system
        return f"{self.system_prefix}{text}{self.system_postfix}" if text else ""

    def render_turns(self, turns: Sequence[Mapping[str, str]],
                     tool_tag: str = "tool_response") -> str:
        """User, tool and assistant turns (no system), each answer closed by ``turn_end``."""
        out = []
        for turn in turns:
            if turn["role"] == "assistant":
                out.append(f"{turn['content']}{self.turn_end}")
            elif turn["role"] == "tool":
                out.append(f"{self.prefix}<{tool_tag}>\n{turn['content']}\n</{tool_tag}>"
                           f"{self.postfix}")
            else:
                out.append(f"{self.prefix}{turn['content']}{self.postfix}")
        return "".join(out)


#: Well-known templates, by the style name rkllm.modelfile reports for real model files.
TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n",
                           "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>",
                           "You are a helpful assistant.", "chatml"),
    "llama3": ChatTemplate("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>",
                           "<|start_header_id|>user<|end_header_id|>\n\n",
                           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                           "<|eot_id|>", "", "llama3"),
    "deepseek": ChatTemplate("", "", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>",
                             "", "deepseek"),
}


def _from_parts(system_prompt: str, prefix: str, postfix: str) -> ChatTemplate:
    """A template from the three parts a model file carries (the runtime's own form)."""
    for known in TEMPLATES.values():
        if (known.prefix, known.postfix) == (prefix, postfix) and \
                system_prompt.startswith(known.system_prefix) and \
                system_prompt.endswith(known.system_postfix):
            inner = system_prompt[len(known.system_prefix):
                                  len(system_prompt) - len(known.system_postfix)]
            return ChatTemplate(known.system_prefix, known.system_postfix, prefix, postfix,
                                known.turn_end, inner if system_prompt else "", known.name)
    # unknown style: the system prompt is kept as it is; an answer ends where the postfix's
    # own closing text ends (the part before the prefix's opening marker, if it has one)
    opening = prefix.split("user")[0] if "user" in prefix else ""
    cut = postfix.find(opening) if opening else -1
    return ChatTemplate("", "", prefix, postfix, postfix[:cut].rstrip() if cut > 0 else "",
                        system_prompt, "model")


def detect_template(llm: CoreLLM) -> ChatTemplate | None:
    """The chat template of the loaded model file, when it tells (None otherwise)."""
    from rkllm.modelfile import inspect_model

    try:
        fact = inspect_model(llm.model_path).facts.get("chat_template")
    except RKLLMError:  # an unreadable file is the loader's business, not the template's
        return None
    if fact is None:
        return None
    value = fact.value
    if isinstance(value, dict):
        return _from_parts(value.get("system_prompt", ""), value.get("prompt_prefix", ""),
                           value.get("prompt_postfix", ""))
    style = str(value).split(" ")[0]
    return TEMPLATES.get(style)


def resolve_template(llm: CoreLLM, template: ChatTemplate | str | None) -> ChatTemplate | None:
    """``template=`` as given (a ChatTemplate or a name in TEMPLATES), else the model's own."""
    if isinstance(template, ChatTemplate):
        return template
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ParamError(f"unknown chat template {template!r}; known: "
                             f"{', '.join(TEMPLATES)} (or pass a ChatTemplate)")
        return TEMPLATES[template]
    if template is not None:
        raise ParamError(f"template must be a ChatTemplate or a name, got "
                         f"{type(template).__name__}")
    return detect_template(llm)
