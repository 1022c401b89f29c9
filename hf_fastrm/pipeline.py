"""A transformers pipeline that returns relevancy and confidence with each generated text.

Importing this module registers the task ``"fastrm-image-text-to-text"`` with transformers' `PIPELINE_REGISTRY`:

```python
>>> import hf_fastrm.pipeline  # registers "fastrm-image-text-to-text"
>>> from transformers import pipeline
>>> pipe = pipeline("fastrm-image-text-to-text", model=wrapper, processor=processor)  # or model=model, head=head
>>> out = pipe(images=image, text=prompt, max_new_tokens=16)
>>> out[0]["generated_text"], out[0]["relevancy"].shape, out[0]["sequence_confidence"]
```

The stock ``"image-text-to-text"`` pipeline asks `generate()` for a bare tensor (``return_dict_in_generate=False``),
so it cannot carry maps; with a [`FastRMWrapper`] as its model it generates as the base model does.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoModelForImageTextToText
from transformers.pipelines import PIPELINE_REGISTRY, ImageTextToTextPipeline

from .head import FastRMHead
from .outputs import FastRMResult
from .wrapper import FastRMWrapper

TASK = "fastrm-image-text-to-text"
"""The task name under which [`FastRMImageTextToTextPipeline`] is registered."""

_FASTRM_KEYS = ("relevancy", "confidence", "sequence_confidence", "token_mask", "image_token_mask")


class _RowLayouts:
    """One prompt's image layouts, one per returned sequence (an opaque object, so that the pipeline's batching
    hands each input its own)."""

    def __init__(self, layouts: list) -> None:
        self.layouts = layouts


class FastRMImageTextToTextPipeline(ImageTextToTextPipeline):
    r"""`ImageTextToTextPipeline` whose outputs also carry FastRM's relevancy and confidence.

    The text is exactly what the stock pipeline returns (the maps are recorded inside the same `generate()` call,
    which leaves the tokens as they are). Each output dict gains, for its ``n`` generated tokens (up to and including
    the end-of-sequence token):

    - ``generated_tokens`` (`list[str]`): the tokens, in order;
    - ``relevancy`` (`torch.FloatTensor` of shape `(n, image_tokens)`): each token's map over the prompt's image
      tokens;
    - ``relevancy_maps`` (`list[torch.FloatTensor]`): one `(n, height, width)` map per image grid, ready to overlay;
    - ``confidence`` (`torch.FloatTensor` of shape `(n,)`) and ``sequence_confidence`` (`float`, the mean over
      the non-special tokens; NaN when every token is special, with a warning).

    Args:
        model ([`FastRMWrapper`] or `PreTrainedModel`): a wrapper with its head, or a model together with `head`.
        head ([`FastRMHead`] or `str`, *optional*): a head (or a head folder / Hub id) when `model` is a bare model.
        check_base_model (`bool`, *optional*, defaults to `True`): see [`FastRMHead.check_compatible`].
        kwargs: as for `ImageTextToTextPipeline` (`processor`, `device`, generation defaults, ...).

    Call arguments are those of the stock pipeline, plus ``return_relevancy`` (`bool` or ``"gradient"``, defaults to
    `True`; also accepted inside ``generate_kwargs``): ``False`` gives the stock outputs, ``"gradient"`` the teacher's
    exact maps (slow; the wrapper may then lack a head).
    """

    def __init__(
        self,
        *args: Any,
        head: FastRMHead | str | os.PathLike | None = None,
        check_base_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if "model" in kwargs:
            model = kwargs.pop("model")
        else:
            model, args = args[0], args[1:]
        if isinstance(model, FastRMWrapper):
            if head is not None:
                model = FastRMWrapper(model.model, _load_head(head), check_base_model=check_base_model)
        else:
            model = FastRMWrapper(model, _load_head(head), check_base_model=check_base_model)
        super().__init__(model, *args, **kwargs)

    def check_model_type(self, supported_models: Any) -> None:
        # the registry knows the base model's class, not the wrapper's
        wrapper = self.model
        self.model = wrapper.model
        try:
            super().check_model_type(supported_models)
        finally:
            self.model = wrapper

    def _sanitize_parameters(self, return_relevancy: bool | str | None = None, **kwargs: Any):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if return_relevancy is not None:
            forward_params["return_relevancy"] = return_relevancy
        return preprocess_params, forward_params, postprocess_params

    def _forward(
        self, model_inputs: dict[str, Any], generate_kwargs: dict[str, Any] | None = None, return_relevancy: Any = True
    ) -> dict[str, Any]:
        generate_kwargs = dict(generate_kwargs or {})
        return_relevancy = generate_kwargs.pop("return_relevancy", return_relevancy)
        if not return_relevancy:
            return super()._forward(model_inputs, generate_kwargs)
        prompt_text = model_inputs.pop("text")
        input_ids = model_inputs["input_ids"]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=True)
        outputs = self.model.generate(**model_inputs, **generate_kwargs, return_relevancy=return_relevancy)
        batch = input_ids.shape[0]
        candidates = outputs.sequences.shape[0] // batch

        def per_input(tensor: torch.Tensor) -> torch.Tensor:  # (rows, ...) -> (batch, candidates, ...)
            return tensor.reshape(batch, candidates, *tensor.shape[1:])

        layouts = outputs.image_layouts
        return {
            "generated_sequence": per_input(outputs.sequences),
            "prompt_text": prompt_text,
            "input_ids": input_ids,
            **{key: per_input(getattr(outputs, key)) for key in _FASTRM_KEYS},
            "image_layouts": [_RowLayouts(layouts[row * candidates : (row + 1) * candidates]) for row in range(batch)],
        }

    def postprocess(self, model_outputs: dict[str, Any], **postprocess_kwargs: Any) -> list[dict[str, Any]]:
        if "relevancy" not in model_outputs:
            return super().postprocess(model_outputs, **postprocess_kwargs)
        fastrm = {key: model_outputs.pop(key).flatten(0, 1) for key in _FASTRM_KEYS}
        layouts = model_outputs.pop("image_layouts")
        layouts = (layouts[0] if isinstance(layouts, list) else layouts).layouts
        prompt_length = model_outputs["input_ids"].shape[-1]
        sequences = model_outputs["generated_sequence"].flatten(0, 1)
        records = super().postprocess(model_outputs, **postprocess_kwargs)
        for row, record in enumerate(records):
            num_tokens = int(fastrm["token_mask"][row].sum())
            image_mask = fastrm["image_token_mask"][row]
            result = FastRMResult(
                relevancy=fastrm["relevancy"][row : row + 1, :num_tokens],
                confidence=fastrm["confidence"][row : row + 1, :num_tokens],
                sequence_confidence=fastrm["sequence_confidence"][row : row + 1],
                token_mask=fastrm["token_mask"][row : row + 1, :num_tokens],
                image_token_mask=image_mask[None],
                image_layouts=[layouts[row]],
            )
            token_ids = sequences[row, prompt_length : prompt_length + num_tokens].tolist()
            tokenizer = self.tokenizer if self.tokenizer is not None else self.processor.tokenizer
            record["generated_tokens"] = tokenizer.convert_ids_to_tokens(token_ids)
            record["relevancy"] = result.relevancy[0][:, image_mask]
            record["relevancy_maps"] = result.relevancy_maps(0)
            record["confidence"] = result.confidence[0]
            record["sequence_confidence"] = float(result.sequence_confidence[0])
        return records


def _load_head(head: FastRMHead | str | os.PathLike | None) -> FastRMHead | None:
    if head is None or isinstance(head, FastRMHead):
        return head
    return FastRMHead.from_pretrained(head)


if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is not FastRMImageTextToTextPipeline:
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=FastRMImageTextToTextPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )
