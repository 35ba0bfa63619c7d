"""Classic LangChain memory as pure functions: the texts of a chain's inputs and outputs.

`DistilledEpisodicMemory`'s `load_memory_variables` and `save_context` use them (the package
does not depend on `langchain-classic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, get_buffer_string

from langchain_kd_memory.errors import InvalidArgumentError
from langchain_kd_memory.runs import extract_query, extract_response


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{name} must be a dict, got {type(value).__name__}")
    return value


def input_text(inputs: object, input_key: str | None, memory_key: str) -> str:
    """The user's text among a chain's `inputs`: `input_key`, else the only other input."""
    inputs = _mapping(inputs, "inputs")
    key = input_key
    if key is None:
        keys = [k for k in inputs if k not in (memory_key, "stop")]
        if len(keys) != 1:
            raise InvalidArgumentError(
                f"cannot tell which input is the user's text among {sorted(keys)}: set input_key"
            )
        key = keys[0]
    if key not in inputs:
        raise InvalidArgumentError(f"input_key {key!r} is not in the inputs {sorted(inputs)}")
    return extract_query(inputs[key])


def output_text(outputs: object, output_key: str | None) -> str:
    """The answer among a chain's `outputs`: `output_key`, else the only one, else "output"."""
    outputs = _mapping(outputs, "outputs")
    key = output_key
    if key is None:
        if len(outputs) == 1:
            key = next(iter(outputs))
        elif "output" in outputs:
            key = "output"
        else:
            raise InvalidArgumentError(
                f"cannot tell which output is the answer among {sorted(outputs)}: set output_key"
            )
    if key not in outputs:
        raise InvalidArgumentError(f"output_key {key!r} is not in the outputs {sorted(outputs)}")
    return extract_response(outputs[key])


def history(documents: list[Document], as_messages: bool) -> list[BaseMessage] | str:
    """Recalled episodes as Human/AI messages, or as one string of "Human:"/"AI:" lines."""
    messages: list[BaseMessage] = []
    for doc in documents:
        messages.append(HumanMessage(doc.metadata["query"]))
        if doc.metadata["response"]:
            messages.append(AIMessage(doc.metadata["response"]))
    return messages if as_messages else get_buffer_string(messages)
