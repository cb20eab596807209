"""Chat-template rendering to token ids, including the append-only view used by transcript mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChatCodec:
    """Renders chat messages with the tokenizer's own template and encodes text without extra specials.

    ``template_kwargs`` go to the template (e.g. ``{"enable_thinking": False}`` for Qwen3). A tokenizer
    without a chat template (a base model) gets the messages' contents as plain paragraphs."""

    tokenizer: object
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return "\n\n".join(m["content"] for m in messages) + "\n"
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.render(messages))


@dataclass
class Transcript:
    """One episode as an append-only chat: each turn adds the new text's tokens to `ids`.

    Only the suffix that the template adds is tokenized, so the ids are exactly what the policy
    saw, turn after turn, and a KV cache of the earlier turns stays valid."""

    codec: ChatCodec
    messages: list[dict]
    ids: list[int]
    text: str

    @classmethod
    def start(cls, codec: ChatCodec, messages: list[dict]) -> Transcript:
        text = codec.render(messages)
        return cls(codec, list(messages), codec.encode(text), text)

    def add_response(self, response_ids: list[int]) -> None:
        # The message content is the raw decode (special tokens kept, a final end-of-turn token
        # dropped) so that the template's render of it extends exactly the text fed so far.
        raw = self.codec.tokenizer.decode(response_ids, skip_special_tokens=False)
        self.ids.extend(response_ids)
        self.text += raw
        eot = self.codec.tokenizer.eos_token or ""
        content = raw[: -len(eot)] if eot and raw.endswith(eot) else raw
        self.messages.append({"role": "assistant", "content": content})

    def add_user(self, message: dict) -> None:
        self.messages.append(message)
        text = self.codec.render(self.messages)
        if not text.startswith(self.text):
            raise ValueError(
                "transcript mode needs a chat template whose renders only append text, but re-rendering this "
                "conversation changed earlier text (e.g. a template that strips earlier <think> blocks); "
                "use rollout.context_mode=window for this model"
            )
        self.ids.extend(self.codec.encode(text[len(self.text) :]))
        self.text = text
