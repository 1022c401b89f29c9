"""`FastRMWrapper`: a vision-language model whose `generate()` can also return relevancy maps."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.utils import logging

from .architectures import get_adapter
from .constants import CONFIG_NAME, HEAD_SUBFOLDER
from .head import FastRMHead
from .outputs import attach_result

logger = logging.get_logger(__name__)

_HEAD_HUB_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")


class FastRMWrapper(nn.Module):
    """Wraps a Hugging Face vision-language model and a [`FastRMHead`], as PEFT's `PeftModel` wraps a model and its
    adapter.

    It is an `nn.Module` holding the base model (`self.model`) and the head (`self.head`, `None` when there is none)
    as registered submodules. Without ``return_relevancy`` it behaves as the base model: attributes it does not have
    itself (`config`, `generation_config`, `device`, `dtype`, `can_generate`, ...) are the base model's, and so are
    `generate`, `forward`/`__call__` and `save_pretrained`. With ``generate(..., return_relevancy=True)`` the output
    is a [`FastRMGenerateDecoderOnlyOutput`] (or its beam-search twin) carrying `relevancy`, `confidence`,
    `sequence_confidence` and `relevancy_maps()`.

    `.eval()`, `.train()`, `.to()`, `.cpu()`, `.cuda()`, `.float()`, `.half()`, `.bfloat16()`, `.double()` and
    `.requires_grad_()` act on the base model and the head (the head follows the model to its final norm's device,
    and to the dtype a call names; at construction it keeps its own dtype) and return the wrapper, so
    ``model = FastRMWrapper(base, head).eval()`` keeps FastRM. Attributes assigned on the wrapper go to the base model
    (``wrapper.generation_config = ...`` changes what `generate` uses), except the wrapper's own (`model`, `head`,
    `adapter`, `check_base_model`, its methods and `nn.Module` internals).

    `state_dict()` is that of an `nn.Module` with two children: the base model's keys under ``model.`` and the head's
    under ``head.``, so `load_state_dict` round-trips between wrappers. `save_pretrained` writes the base model's
    files as `PreTrainedModel.save_pretrained` does (the folder loads with `AutoModelForImageTextToText`) and the
    head, when there is one, in the sub-folder ``fastrm_head/``; `FastRMWrapper.from_pretrained(folder)` finds it
    there again.

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

    _OWN_ATTRIBUTES = frozenset({"model", "head", "adapter", "check_base_model", "training"})

    def __init__(self, model: nn.Module, head: FastRMHead | None = None, *, check_base_model: bool = True) -> None:
        if isinstance(model, FastRMWrapper):
            model = model.model
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a vision-language model (an nn.Module), got {type(model).__name__}.")
        if head is not None and not isinstance(head, FastRMHead):
            raise TypeError(
                f"`head` must be a FastRMHead, got {type(head).__name__}; load one with FastRMHead.from_pretrained."
            )
        adapter = get_adapter(model)
        if head is not None:
            head.check_compatible(model.config, check_base_model=check_base_model)
        super().__init__()
        self.model = model
        self.register_module("head", head)
        self.adapter = adapter
        self.check_base_model = check_base_model
        if head is not None:
            self._head_follows_model()

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
            head (`str` or [`FastRMHead`], *optional*): a head folder or Hub repo id, or a loaded head. When omitted
                and `pretrained_model_name_or_path` is a local folder written by [`FastRMWrapper.save_pretrained`],
                the head in its ``fastrm_head/`` sub-folder is loaded (its base model name is not checked against
                the folder's: they were saved together; hidden size and model type still are).
            head_kwargs (`dict`, *optional*): passed to [`FastRMHead.from_pretrained`] (revision, subfolder,
                cache_dir, token, local_files_only, ...); `cache_dir`, `token` and `local_files_only` of
                `from_pretrained_kwargs` are used for the head too unless given here.
            check_base_model (`bool`, *optional*, defaults to `True`): see [`FastRMHead.check_compatible`].
            from_pretrained_kwargs: `dtype`, `device_map`, `revision`, `attn_implementation`, ... for the model.
        """
        if isinstance(pretrained_model_name_or_path, FastRMWrapper):
            pretrained_model_name_or_path = pretrained_model_name_or_path.model
        if isinstance(pretrained_model_name_or_path, nn.Module):
            model = pretrained_model_name_or_path
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(
                pretrained_model_name_or_path, **from_pretrained_kwargs
            )
            saved_head = os.path.join(os.fspath(pretrained_model_name_or_path), HEAD_SUBFOLDER)
            if head is None and os.path.isfile(os.path.join(saved_head, CONFIG_NAME)):
                # saved together with this model: its base model is this folder, whatever name the head recorded
                head, check_base_model = saved_head, False
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
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules of the wrapper
        except AttributeError:
            if name in ("model", "_modules", "_parameters", "_buffers") or "_modules" not in self.__dict__:
                raise  # not yet initialised (unpickling, copying): never look into a missing model
            return getattr(self._modules["model"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in self._OWN_ATTRIBUTES
            or name.startswith("_")
            or hasattr(type(self), name)  # methods and class attributes (`forward` patched by accelerate, ...)
            or "_modules" not in self.__dict__
            or "model" not in self._modules
            or name in self.__dict__
        ):
            super().__setattr__(name, value)
        else:
            setattr(self.model, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward (same arguments, same output)."""
        return self.model(*args, **kwargs)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.model)))

    def _head_follows_model(self, dtype: torch.dtype | None = None) -> None:
        """Puts the head on the device of the model's final norm (what the head reads), and in `dtype` if given."""
        norm_param = next(self.adapter.final_norm(self.model).parameters(), None)
        if norm_param is None:
            norm_param = next(self.model.parameters(), None)
        device = norm_param.device if norm_param is not None else None
        self.head.to(device=device, dtype=dtype if dtype is not None and dtype.is_floating_point else None)

    def to(self, *args: Any, **kwargs: Any) -> FastRMWrapper:
        """`to()` of the base model (with its checks for quantized or dispatched models); the head follows to the
        device of the model's final norm, and to the dtype when one is given. Returns the wrapper."""
        self.model.to(*args, **kwargs)
        if self.head is not None:
            _, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
            self._head_follows_model(dtype)
        return self

    def cpu(self) -> FastRMWrapper:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> FastRMWrapper:
        self.model.cuda(device)
        if self.head is not None:
            self._head_follows_model()
        return self

    def float(self) -> FastRMWrapper:
        return self.to(torch.float32)

    def half(self) -> FastRMWrapper:
        return self.to(torch.float16)

    def bfloat16(self) -> FastRMWrapper:
        return self.to(torch.bfloat16)

    def double(self) -> FastRMWrapper:
        return self.to(torch.float64)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, save_head: bool = True, **kwargs: Any):
        """`save_pretrained` of the base model into `save_directory` (loadable with `AutoModelForImageTextToText`);
        the head, when there is one and `save_head` is True, goes to ``save_directory/fastrm_head/`` (its config,
        safetensors and model card), where [`FastRMWrapper.from_pretrained`] finds it.

        Args:
            save_directory (`str`): the folder.
            save_head (`bool`, *optional*, defaults to `True`): also write the head.
            args, kwargs: passed to the base model's `save_pretrained` (`safe_serialization`, `max_shard_size`, ...).
        """
        result = self.model.save_pretrained(save_directory, *args, **kwargs)
        if save_head and self.head is not None:
            self.head.save_pretrained(os.path.join(os.fspath(save_directory), HEAD_SUBFOLDER))
        return result

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
        if kwargs.get("return_dict_in_generate") is False:
            raise ValueError(
                "`return_relevancy` needs generate()'s dict output, but the call passed return_dict_in_generate=False "
                "(the stock transformers pipelines do). For a pipeline, use the task 'fastrm-image-text-to-text' "
                "(`import hf_fastrm.pipeline`; see docs/quickstart.md), which returns relevancy and confidence with "
                "each output."
            )
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
            inputs = dict(kwargs)
            if args:
                inputs.setdefault("input_ids", args[0])
            if isinstance(inputs.get("input_ids"), torch.Tensor):  # before generating, not after
                self.adapter.check_required_inputs(self.model.config, inputs["input_ids"], inputs)
            outputs = self.model.generate(*args, **kwargs)
            return attach_result(outputs, method.attribute(self.model, inputs, outputs))
        processors = LogitsProcessorList(list(kwargs.pop("logits_processor", None) or []))
        with method.logits_processor(self.model) as streaming:
            processors.append(streaming)
            outputs = self.model.generate(*args, logits_processor=processors, **kwargs)
        return attach_result(outputs, streaming.result_for(outputs, eos_token_id=call_eos_token_id(kwargs)))
