"""`distill`: answers and teacher maps over a corpus, written as resumable training shards.

For each batch of examples: build the prompts with the model's processor, generate the answers (greedy), run the
gradient teacher (`hf_fastrm.teacher.gradient_relevancy`) on the generated sequences, and keep what the head needs
(image-token and answer-token last hidden states, teacher maps). Under ``accelerate launch`` the pending examples are
split between the processes; each process writes its own shards (``shard-{rank}-{index}``), so every example lands
in exactly one complete shard, and a killed run resumes by skipping the examples of the shards already renamed into
place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..architectures.llava import LlavaAdapter
from ..utils.io import atomic_write_text
from .arguments import DistillArguments
from .corpus import Corpus, CorpusExample, load_corpus
from .launch import wants_cpu
from .shards import (
    MODEL_FIELDS,
    ShardExample,
    check_same_model,
    list_shards,
    parse_shard_name,
    read_shard_info,
    shard_name,
    write_shard,
)

logger = logging.get_logger(__name__)

DEFAULT_PROMPT_TEMPLATE = LlavaAdapter.prompt_template
"""LLaVA-1.5's prompt, used when the processor has no chat template and no `prompt_template` is given."""
RUN_CONFIG_NAME = "distill_config.json"
MANIFEST_NAME = "manifest.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DistillSummary:
    """What a [`distill`] call did.

    Attributes:
        output_dir (`str`): the shard folder.
        num_examples (`int`): examples in complete shards now (all processes).
        num_new_examples (`int`): examples this process distilled in this call.
        num_skipped_examples (`int`): corpus examples already in complete shards when the call started.
        shards (`list[str]`): shards this process wrote in this call.
        seconds (`float`): wall time of this process's model work (generation + teacher), in seconds.
    """

    output_dir: str
    num_examples: int
    num_new_examples: int
    num_skipped_examples: int
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- prompts and model
def build_prompt(processor: Any, question: str, prompt_template: str | None = None) -> str:
    """The prompt for one image and `question`.

    With `prompt_template` (``{question}`` and optionally ``{image}``, the processor's image placeholder) that
    template; otherwise the processor's chat template if it has one, else [`DEFAULT_PROMPT_TEMPLATE`].
    """
    image_token = getattr(processor, "image_token", None) or "<image>"
    if prompt_template is None and getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    template = prompt_template or DEFAULT_PROMPT_TEMPLATE
    if "{question}" not in template:
        raise ValueError(f"The prompt template {template!r} has no '{{question}}' placeholder.")
    if "{image}" not in template and image_token not in template:
        raise ValueError(
            f"The prompt template {template!r} has neither '{{image}}' nor the processor's image token "
            f"{image_token!r}, so the image would not be part of the prompt."
        )
    return template.replace("{image}", image_token).replace("{question}", question)


def load_model_and_processor(
    model: str | os.PathLike | nn.Module,
    processor: Any = None,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> tuple[nn.Module, Any]:
    """Loads (unless given) the model with `AutoModelForImageTextToText` and its processor with `AutoProcessor`."""
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"`dtype` must be one of {[*_DTYPES, 'auto']}, got {dtype!r}.")
        dtype = _DTYPES[dtype]
    if not isinstance(model, nn.Module):
        from transformers import AutoModelForImageTextToText

        if dtype is None:
            dtype = torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(
            model, revision=revision, dtype=dtype, device_map=device_map
        )
    if processor is None:
        from transformers import AutoProcessor

        source = model.config._name_or_path
        processor = AutoProcessor.from_pretrained(source, revision=revision)
    if device_map is None and device is not None:
        model.to(device)
    model.eval()
    return model, processor


def model_info_of(model: nn.Module, model_name_or_path: str | None = None, revision: str | None = None) -> dict:
    """The record stored in every shard to tie it to its base model."""
    config = model.config
    return {
        "model_name_or_path": str(model_name_or_path or config._name_or_path or type(model).__name__),
        "model_revision": revision or getattr(config, "_commit_hash", None),
        "model_type": config.model_type,
        "hidden_size": int(config.get_text_config().hidden_size),
    }


# ---------------------------------------------------------------------------------------------- one batch
@torch.no_grad()
def _generate(model: nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int, pad_token_id: int | None):
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "return_dict_in_generate": True}
    if getattr(model.generation_config, "pad_token_id", None) is None and pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    return model.generate(**inputs, **kwargs)


def distill_batch(
    model: nn.Module,
    processor: Any,
    examples: list[CorpusExample],
    *,
    prompt_template: str | None = None,
    max_new_tokens: int = 32,
    teacher_target: str = "logit",
    teacher_kwargs: dict[str, Any] | None = None,
) -> list[ShardExample]:
    """Generates the answers of `examples` and computes their teacher maps and hidden states.

    Returns:
        One [`ShardExample`] per example: ``image_states (N, H)``, ``token_states (T, H)``, ``teacher_maps (T, N)``
        over the answer's generated tokens (up to and including its end-of-sequence token), and ``text_states (M, H)``
        at the prompt's text tokens.
    """
    from ..teacher import gradient_relevancy

    tokenizer = getattr(processor, "tokenizer", processor)
    if hasattr(tokenizer, "padding_side"):
        tokenizer.padding_side = "left"  # generation appends on the right
    prompts = [build_prompt(processor, example.question, prompt_template) for example in examples]
    device = _input_device(model)
    inputs = processor(images=[example.image for example in examples], text=prompts, return_tensors="pt", padding=True)
    inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    outputs = _generate(model, inputs, max_new_tokens, getattr(tokenizer, "pad_token_id", None))
    sequences = outputs.sequences
    teacher = gradient_relevancy(
        model, inputs, sequences, target=teacher_target, return_hidden_states=True, **(teacher_kwargs or {})
    )
    result = teacher.result
    prompt_length = inputs["input_ids"].shape[1]
    distilled = []
    for row, example in enumerate(examples):
        token_mask = result.token_mask[row].bool().cpu()
        image_mask = result.image_token_mask[row].bool().cpu()
        maps = result.relevancy[row].detach().float().cpu()[token_mask][:, image_mask]
        usable = torch.isfinite(maps).all(dim=-1)
        finite = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        usable &= finite.amax(dim=-1) > finite.amin(dim=-1)  # a constant map has no min-max labels
        answer_ids = sequences[row, prompt_length:].cpu()[: result.token_mask.shape[1]][token_mask]
        distilled.append(
            ShardExample(
                example_id=example.example_id,
                image_states=teacher.image_hidden_states[row].detach().cpu()[image_mask],
                token_states=teacher.token_hidden_states[row].detach().cpu()[token_mask],
                teacher_maps=finite,
                token_mask=usable,
                answer_token_ids=answer_ids,
                question=example.question,
                answer=tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
                text_states=teacher.text_hidden_states[row].detach().cpu()[teacher.text_token_mask[row].cpu()],
            )
        )
    return distilled


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- the whole corpus
def distill(
    arguments: DistillArguments | str | os.PathLike | nn.Module,
    corpus: str | os.PathLike | Corpus | Any = None,
    output_dir: str | os.PathLike | None = None,
    *,
    processor: Any = None,
    teacher_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> DistillSummary:
    """Distils teacher maps over a corpus into training shards in an output folder (resuming if shards are there).

    Run it in one process, or under ``accelerate launch`` (one process per GPU, or ``--cpu``): the examples not yet
    in a complete shard are split between the processes, each writing its own shards.

    Args:
        arguments ([`DistillArguments`], or the model): every option in one dataclass (what `hf-fastrm distill`
            parses); or, as a shorthand, the model (a Hub id, a folder or a loaded model), with `corpus` (also a
            [`Corpus`] or a `Dataset`), `output_dir` and the other [`DistillArguments`] fields as keyword arguments.
        processor (*optional*): the model's processor (loaded with `AutoProcessor` from the model's path otherwise).
        teacher_kwargs (`dict`, *optional*): more options of `hf_fastrm.teacher.gradient_relevancy`.

    Returns:
        A [`DistillSummary`].
    """
    if not isinstance(arguments, DistillArguments):
        arguments = DistillArguments(model=arguments, corpus=corpus, output_dir=output_dir, **options)
    elif corpus is not None or output_dir is not None or options:
        raise TypeError("Pass either a DistillArguments or the model, corpus and output_dir with keyword options.")
    values = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(arguments)}
    token_chunk_size = values.pop("token_chunk_size")
    teacher_kwargs = dict(teacher_kwargs or {})
    if token_chunk_size is not None:
        teacher_kwargs.setdefault("token_chunk_size", token_chunk_size)
    return _distill(**values, processor=processor, teacher_kwargs=teacher_kwargs or None)


def _distill(
    model: str | os.PathLike | nn.Module,
    corpus: str | os.PathLike | Corpus | Any,
    output_dir: str | os.PathLike,
    *,
    processor: Any = None,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    image_column: str = "image",
    question_column: str = "question",
    id_column: str | None = None,
    split: str | None = None,
    questions_file: str | None = None,
    limit: int | None = None,
    prompt_template: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    examples_per_shard: int = 256,
    storage_dtype: str | torch.dtype = torch.bfloat16,
    teacher_target: str = "logit",
    teacher_kwargs: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> DistillSummary:
    """[`distill`] with its options unpacked (see [`DistillArguments`]).

    Args:
        model: a Hub id or folder (loaded with `AutoModelForImageTextToText`), or a loaded model.
        corpus: see [`load_corpus`] (a dataset name or folder, a folder of images with a JSONL, a `Dataset`), or a
            [`Corpus`].
        output_dir: where the shards, ``distill_config.json`` and ``manifest.json`` go.
        processor (*optional*): the model's processor (loaded with `AutoProcessor` from the model's path otherwise).
        revision, dtype, device, device_map: how to load the model (`dtype` defaults to bfloat16 on CUDA, float32
            on CPU; `device` to the process's accelerator device).
        image_column, question_column, id_column, split, questions_file, limit: see [`load_corpus`].
        prompt_template (`str`, *optional*): ``"...{image}...{question}..."``; the processor's chat template (or
            [`DEFAULT_PROMPT_TEMPLATE`]) otherwise.
        max_new_tokens (`int`, *optional*, defaults to 32): answer length limit (greedy decoding).
        batch_size (`int`, *optional*, defaults to 8): examples per generate + teacher call.
        examples_per_shard (`int`, *optional*, defaults to 256): examples per shard file (the unit of resumption).
        storage_dtype (*optional*, defaults to bfloat16): dtype of the hidden states on disk.
        teacher_target, teacher_kwargs: passed to `hf_fastrm.teacher.gradient_relevancy`.

    Returns:
        A [`DistillSummary`].
    """
    from accelerate import PartialState

    if batch_size < 1 or examples_per_shard < 1 or max_new_tokens < 1:
        raise ValueError("`batch_size`, `examples_per_shard` and `max_new_tokens` must be positive.")
    if isinstance(storage_dtype, str):
        if storage_dtype not in _DTYPES:
            raise ValueError(f"`storage_dtype` must be one of {list(_DTYPES)}, got {storage_dtype!r}.")
        storage_dtype = _DTYPES[storage_dtype]
    state = PartialState(cpu=wants_cpu(device=device))
    output_dir = os.fspath(output_dir)
    if not isinstance(corpus, Corpus):
        corpus_name = os.fspath(corpus) if isinstance(corpus, (str, os.PathLike)) else None
        corpus = load_corpus(
            corpus,
            image_column=image_column,
            question_column=question_column,
            id_column=id_column,
            split=split,
            questions_file=questions_file,
            limit=limit,
        )
    else:
        corpus_name = corpus.description
    model_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    model, processor = load_model_and_processor(
        model,
        processor,
        revision=revision,
        dtype=dtype,
        device=device if device is not None else (None if device_map is not None else state.device),
        device_map=device_map,
    )
    model_info = model_info_of(model, model_name, revision)
    run_config = {
        **model_info,
        "corpus": corpus_name or corpus.description,
        "split": split,
        "prompt_template": prompt_template,
        "max_new_tokens": max_new_tokens,
        "teacher_target": teacher_target,
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
    }

    # Every process checks (read-only) before anyone writes, so that a refusal is raised everywhere.
    os.makedirs(output_dir, exist_ok=True)
    _check_run_config(output_dir, run_config)
    if state.is_main_process:
        if not os.path.exists(os.path.join(output_dir, RUN_CONFIG_NAME)):
            atomic_write_text(os.path.join(output_dir, RUN_CONFIG_NAME), json.dumps(run_config, indent=2) + "\n")
        _remove_stale_temporary_files(output_dir)
    state.wait_for_everyone()
    done_ids, next_index = _scan_complete_shards(output_dir, model_info, state.process_index)
    # Nobody writes a shard before every process has seen the same set of complete ones.
    state.wait_for_everyone()

    pending = [index for index, example_id in enumerate(corpus.example_ids) if example_id not in done_ids]
    skipped = len(corpus) - len(pending)
    if skipped and state.is_main_process:
        logger.info(f"Resuming: {skipped} of {len(corpus)} examples are already in complete shards.")
    with state.split_between_processes(pending) as mine:
        mine = list(mine)

    written: list[str] = []
    buffer: list[ShardExample] = []
    seconds = 0.0
    new_examples = 0
    flushed_examples = 0
    progress = logging.tqdm(
        total=len(mine),
        desc="distill" if state.num_processes == 1 else f"distill (process {state.process_index})",
        unit="example",
        disable=not show_progress or not state.is_local_main_process,
    )

    def flush() -> None:
        nonlocal next_index, flushed_examples
        name = shard_name(state.process_index, next_index)
        write_shard(
            os.path.join(output_dir, name),
            buffer,
            model_info,
            storage_dtype=storage_dtype,
            extra_metadata={"process_index": state.process_index, "corpus": run_config["corpus"]},
        )
        next_index += 1
        flushed_examples += len(buffer)
        written.append(name)
        buffer.clear()
        _write_progress(output_dir, state.process_index, written, flushed_examples)

    with progress:
        for start in range(0, len(mine), batch_size):
            batch = [corpus[index] for index in mine[start : start + batch_size]]
            began = time.perf_counter()
            buffer.extend(
                distill_batch(
                    model,
                    processor,
                    batch,
                    prompt_template=prompt_template,
                    max_new_tokens=max_new_tokens,
                    teacher_target=teacher_target,
                    teacher_kwargs=teacher_kwargs,
                )
            )
            seconds += time.perf_counter() - began
            new_examples += len(batch)
            progress.update(len(batch))
            while len(buffer) >= examples_per_shard:
                overflow = buffer[examples_per_shard:]
                del buffer[examples_per_shard:]
                flush()
                buffer.extend(overflow)
        if buffer:
            flush()

    state.wait_for_everyone()
    infos = [read_shard_info(path) for path in list_shards(output_dir)]
    total = sum(len(info.example_ids) for info in infos)
    if state.is_main_process:
        manifest = {
            **run_config,
            "num_examples": total,
            "num_corpus_examples": len(corpus),
            "complete": total >= len(corpus),
            "shards": [{"file": os.path.basename(info.path), "num_examples": len(info.example_ids)} for info in infos],
        }
        atomic_write_text(os.path.join(output_dir, MANIFEST_NAME), json.dumps(manifest, indent=2) + "\n")
    state.wait_for_everyone()
    return DistillSummary(
        output_dir=output_dir,
        num_examples=total,
        num_new_examples=new_examples,
        num_skipped_examples=skipped,
        shards=written,
        seconds=seconds,
    )


def _check_run_config(output_dir: str, run_config: dict[str, Any]) -> None:
    path = os.path.join(output_dir, RUN_CONFIG_NAME)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    differing = [key for key in MODEL_FIELDS if previous.get(key) != run_config[key]]
    if differing:
        details = ", ".join(f"{key} {previous.get(key)!r} there vs {run_config[key]!r} now" for key in differing)
        raise ValueError(
            f"{output_dir!r} holds shards of another model ({details}). Use another `--output-dir` for this model."
        )
    changed = [key for key in run_config if key not in MODEL_FIELDS and previous.get(key) != run_config[key]]
    if changed:
        logger.warning(
            f"Resuming in {output_dir!r} with different settings ({', '.join(changed)}) than the run that started "
            "it; the shards will mix both."
        )


def _remove_stale_temporary_files(output_dir: str) -> None:
    # Left by a run killed during a write (a clean failure removes its own); never under a final name.
    for pattern in (".shard-*.tmp", ".progress-*.tmp", f".{MANIFEST_NAME}.*.tmp", f".{RUN_CONFIG_NAME}.*.tmp"):
        for path in glob.glob(os.path.join(output_dir, pattern)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                logger.info(f"Removed {os.path.basename(path)!r}, left half-written by an interrupted run.")


def _scan_complete_shards(output_dir: str, model_info: dict[str, Any], rank: int) -> tuple[set[str], int]:
    """(ids of examples in complete shards, next free shard index for `rank`); refuses another model's shards."""
    infos = [read_shard_info(path) for path in list_shards(output_dir)]
    done: set[str] = set()
    next_index = 0
    if infos:
        common = check_same_model(infos)
        if common != {key: model_info[key] for key in MODEL_FIELDS}:
            raise ValueError(
                f"{output_dir!r} holds shards of {common}, not of {model_info}. Use another `--output-dir`."
            )
    for info in infos:
        done.update(info.example_ids)
        parsed = parse_shard_name(info.path)
        if parsed is not None and parsed[0] == rank:
            next_index = max(next_index, parsed[1] + 1)
    return done, next_index


def _write_progress(output_dir: str, rank: int, shards: list[str], num_examples: int) -> None:
    record = {"process_index": rank, "shards_written": shards, "examples_written": num_examples, "time": time.time()}
    atomic_write_text(os.path.join(output_dir, f"progress-{rank:05d}.json"), json.dumps(record, indent=2) + "\n")
