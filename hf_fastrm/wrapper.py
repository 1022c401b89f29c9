"""`FastRMWrapper`: a vision-language model whose `generate()` can also return relevancy maps."""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import LogitsProcessorList
from transformers.utils import logging

from .architectures import get_adapter
from .head import FastRMHead
from .outputs import attach_result

logger = logging.get_logger(__name__)

_HEAD_HUB_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")


class FastRMWrapper:
    """Wraps a Hugging Face vision-language model and a [`FastRMHead`].

    Without ``return_relevancy`` it *is* the base model: attribute access, `generate`, `forward`/`__call__` and
    `save_pretrained` pass through unchanged. With ``generate(..., return_relevancy=True)`` the output is a
    [`FastRMGenerateDecoderOnlyOutput`] (or its beam-search twin) carrying `relevancy`, `confidence`,
    `sequence_confidence` and `relevancy_maps()`.

    Args:
        model (`PreTrainedModel`): a model of a supported family.
        head ([`FastRMHead`], *optional*): its head; without one only ``return_relevancy="gradient"`` works.
        check_base_model (`bool`, *optional*, defaults to `True`): see [`FastRMHead.check_compatible`].

    Example:

    ```python
    >>> model = FastRMWrapper.from_pretrained("llava-hf/llava-1.5-7b-hf", head="org/fastrm-llava-1.5-7b",
    ...                                       dtype=torch.bfloat16, device_map="auto")
    >>> out = model.generate(**inputs, max_new_tokens=32, return_relevancy=True)
    >>> out.relevancy.shape, out.sequence_confidence
    ```
    """

    def __init__(self, model: nn.Module, head: FastRMHead | None = None, *, check_base_model: bool = True) -> None:
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "adapter", get_adapter(model))
        if head is not None:
            head.check_compatible(model.config, check_base_model=check_base_model)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "check_base_model", check_base_model)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | nn.Module,
        *,
        head: str | os.PathLike | FastRMHead | None = None,
        head_kwargs: dict[str, Any] | None = None,
        check_base_model: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> FastRMWrapper:
        """Loads the base model (unless given) and the head.

        Args:
            pretrained_model_name_or_path (`str` or `PreTrainedModel`): a Hub id or folder, loaded with
                `AutoModelForImageTextToText.from_pretrained(..., **from_pretrained_kwargs)`, or a loaded model.
            head (`str` or [`FastRMHead`], *optional*): a head folder or Hub repo id, or a loaded head.
            head_kwargs (`dict`, *optional*): passed to [`FastRMHead.from_pretrained`] (revision, subfolder,
                cache_dir, token, local_files_only, ...); `cache_dir`, `token` and `local_files_only` of
                `from_pretrained_kwargs` are used for the head too unless given here.
            check_base_model (`bool`, *optional*, defaults to `True`): see [`FastRMHead.check_compatible`].
            from_pretrained_kwargs: `dtype`, `device_map`, `revision`, `attn_implementation`, ... for the model.
        """
        if isinstance(pretrained_model_name_or_path, nn.Module):
            model = pretrained_model_name_or_path
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(
                pretrained_model_name_or_path, **from_pretrained_kwargs
            )
        if head is not None and not isinstance(head, FastRMHead):
            kwargs = {
                k: from_pretrained_kwargs[k]
                for k in ("cache_dir", "token", "local_files_only")
                if k in from_pretrained_kwargs
            }
            kwargs.update(head_kwargs or {})
            unknown = sorted(set(kwargs) - set(_HEAD_HUB_KWARGS))
            if unknown:
                raise ValueError(f"Unknown `head_kwargs` {unknown}; accepted: {list(_HEAD_HUB_KWARGS)}.")
            head = FastRMHead.from_pretrained(head, **kwargs)
        return cls(model, head, check_base_model=check_base_model)

    # ------------------------------------------------------------------ pass-through
    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "model"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("model", "adapter", "head", "check_base_model"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.model, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.model)))

    def __repr__(self) -> str:
        return f"FastRMWrapper(model={type(self.model).__name__}, head={self.head!r})"

    def to(self, *args: Any, **kwargs: Any) -> FastRMWrapper:
        self.model.to(*args, **kwargs)
        return self

    # ------------------------------------------------------------------ generation
    def generate(self, *args: Any, return_relevancy: bool | str | Any = False, **kwargs: Any) -> Any:
        """`generate()` of the base model; with `return_relevancy` also relevancy maps and confidence.

        Args:
            return_relevancy (`bool`, `str` or `RelevancyMethod`, *optional*, defaults to `False`):
                `True` or ``"fastrm"``: the head's maps, computed inside generation at almost no cost.
                Any other name registered in `hf_fastrm.methods` (``"gradient"``: the teacher's exact gradient
                maps; ``"attention"``, ``"rollout"``, ``"lvlm-interpret"``; or your own) or a method instance: the
                method explains the returned sequences after generation. Either way the output is a dict-style
                `GenerateOutput` (``return_dict_in_generate`` is implied).
            args, kwargs: as for the base model's `generate()` (`logits_processor`, `stopping_criteria`,
                `streamer`, sampling and beam-search settings, ...).
        """
        if return_relevancy is False or return_relevancy is None:
            return self.model.generate(*args, **kwargs)
        from .methods import get_method
        from .results import call_eos_token_id

        name = "fastrm" if return_relevancy is True else return_relevancy
        if name == "fastrm":
            if self.head is None:
                raise ValueError(
                    "This FastRMWrapper has no head: load one with FastRMWrapper.from_pretrained(model, head=...) or "
                    "use another method, e.g. return_relevancy='gradient' for the (slower) gradient maps."
                )
            method = get_method("fastrm", head=self.head, check_base_model=self.check_base_model)
        else:
            method = get_method(name)
        kwargs["return_dict_in_generate"] = True
        if not method.streams:
            outputs = self.model.generate(*args, **kwargs)
            inputs = dict(kwargs)
            if args:
                inputs.setdefault("input_ids", args[0])
            return attach_result(outputs, method.attribute(self.model, inputs, outputs))
        processors = LogitsProcessorList(list(kwargs.pop("logits_processor", None) or []))
        with method.logits_processor(self.model) as streaming:
            processors.append(streaming)
            outputs = self.model.generate(*args, logits_processor=processors, **kwargs)
        return attach_result(outputs, streaming.result_for(outputs, eos_token_id=call_eos_token_id(kwargs)))
