"""The interface every relevancy method implements, and the registry that names them."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from ..outputs import FastRMResult

__all__ = ["RelevancyMethod", "available_methods", "get_method", "register_method", "unregister_method"]


class RelevancyMethod(abc.ABC):
    r"""A way to explain a finished `generate()` call: one relevancy map over the image tokens per generated token.

    Subclasses set `name` (the registered name) and `streams`, and implement [`RelevancyMethod.attribute`]. Options
    that configure the method (a head, layers) go to `__init__`; options of one call go to `attribute`.

    Attributes:
        name (`str`): the name under which the method is registered (``generate(return_relevancy=name)``,
            ``hf-fastrm explain --method name``).
        streams (`bool`): whether the method can run inside `generate()` as a logits processor (then
            [`RelevancyMethod.logits_processor`] returns one); otherwise it runs after generation on the returned
            sequences.
    """

    name: ClassVar[str] = ""
    streams: ClassVar[bool] = False

    @abc.abstractmethod
    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        """Relevancy of every generated token of `outputs_or_sequences` over the image tokens.

        Args:
            model (`PreTrainedModel`): the vision-language model that generated.
            inputs (`dict`): the keyword arguments of that `generate()` call (the processor's tensors; generation
                settings such as `eos_token_id` or `generation_config` are honoured).
            outputs_or_sequences: `generate()`'s output or its `sequences`, `(rows, prompt_len + new_tokens)`.
            options: per-call options of the method.

        Returns:
            [`FastRMResult`] with `relevancy` of shape `(rows, new_tokens, image_tokens)`, assembled by
            [`hf_fastrm.results.assemble_result`].
        """

    def logits_processor(self, model: nn.Module) -> Any:
        """A logits processor (and context manager) that computes the maps inside `generate()` and returns them with
        ``result_for(outputs, eos_token_id=...)``; only for methods with ``streams = True``."""
        raise NotImplementedError(f"The {self.name!r} relevancy method does not run inside generate().")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, streams={self.streams})"


_METHODS: dict[str, type[RelevancyMethod]] = {}


def register_method(method: type[RelevancyMethod], *, exist_ok: bool = False) -> type[RelevancyMethod]:
    """Adds a relevancy method under its `name` (usable as a class decorator).

    Args:
        method: a [`RelevancyMethod`] subclass with a non-empty `name`.
        exist_ok (`bool`, *optional*, defaults to `False`): replace a method already registered under that name
            instead of refusing.

    Example:

    ```python
    >>> from hf_fastrm.methods import RelevancyMethod, register_method
    >>> @register_method
    ... class Uniform(RelevancyMethod):
    ...     name = "uniform"
    ...     def attribute(self, model, inputs, outputs_or_sequences, **options): ...
    >>> model.generate(**inputs, return_relevancy="uniform")
    ```
    """
    if not (isinstance(method, type) and issubclass(method, RelevancyMethod)):
        raise TypeError(f"register_method takes a RelevancyMethod subclass, got {method!r}.")
    if not isinstance(method.name, str) or not method.name:
        raise ValueError(f"{method.__name__}.name is empty: set the name the method is registered under.")
    if method.name in _METHODS and _METHODS[method.name] is not method and not exist_ok:
        raise ValueError(
            f"A relevancy method named {method.name!r} is already registered ({_METHODS[method.name].__name__}); "
            "choose another name or pass `exist_ok=True` to replace it."
        )
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Removes the method registered as `name` (mainly for tests)."""
    _METHODS.pop(name, None)


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str | RelevancyMethod, **init_kwargs: Any) -> RelevancyMethod:
    """An instance of the method registered as `name`, built with `init_kwargs` (an instance passes through)."""
    if isinstance(name, RelevancyMethod):
        if init_kwargs:
            raise ValueError("Options go to the method's constructor: pass a name, or an instance without options.")
        return name
    if name not in _METHODS:
        raise ValueError(
            f"Unknown relevancy method {name!r}; registered: {', '.join(available_methods())}. Add one with "
            "hf_fastrm.methods.register_method."
        )
    return _METHODS[name](**init_kwargs)


def sequences_of(outputs_or_sequences: Any) -> torch.Tensor:
    """`generate()`'s sequences `(rows, prompt_len + new_tokens)`, from its output or the tensor itself."""
    sequences = getattr(outputs_or_sequences, "sequences", outputs_or_sequences)
    if (
        not isinstance(sequences, torch.Tensor)
        or sequences.ndim != 2
        or sequences.dtype not in (torch.long, torch.int)
    ):
        raise TypeError(
            "`outputs_or_sequences` must be generate()'s output or its sequences, a 2-D tensor of token ids; got "
            f"{type(outputs_or_sequences).__name__}."
        )
    return sequences
