"""Image-question corpora for distillation: a `datasets` dataset, or a folder of images with a JSONL of questions.

Either way the corpus is a sequence of [`CorpusExample`] with unique string ids, so that a resumed or multi-process
run can tell which examples are done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_QUESTIONS_FILE = "questions.jsonl"
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class CorpusExample:
    """One image and its question.

    Attributes:
        example_id (`str`): unique within the corpus.
        image (`PIL.Image.Image`): RGB image.
        question (`str`): the question, without any chat formatting.
    """

    example_id: str
    image: Any
    question: str


class Corpus(Sequence):
    """A random-access corpus of [`CorpusExample`].

    Build it with [`load_corpus`]. `example_ids` lists every id without decoding any image.
    """

    def __init__(
        self,
        example_ids: list[str],
        get_image: Any,
        questions: list[str],
        description: str,
    ) -> None:
        duplicates = _duplicates(example_ids)
        if duplicates:
            raise ValueError(
                f"The corpus {description!r} has duplicated example ids {duplicates[:5]}: every example needs a "
                "unique id (set `id_column` to a unique column, or drop it to use row numbers)."
            )
        self.example_ids = example_ids
        self._get_image = get_image
        self._questions = questions
        self.description = description

    def __len__(self) -> int:
        return len(self.example_ids)

    def __getitem__(self, index: int) -> CorpusExample:  # type: ignore[override]
        return CorpusExample(
            example_id=self.example_ids[index], image=self._get_image(index), question=self._questions[index]
        )


def load_corpus(
    corpus: str | os.PathLike | Any,
    *,
    image_column: str = "image",
    question_column: str = "question",
    id_column: str | None = None,
    split: str | None = None,
    questions_file: str | None = None,
    limit: int | None = None,
    **load_dataset_kwargs: Any,
) -> Corpus:
    """Opens a corpus.

    Args:
        corpus: one of
            - a folder of images with a JSONL file (``questions.jsonl`` or `questions_file`) whose lines are
              ``{"image": "file.png", "question": "...", "id": "..."}`` (``id`` optional: line number otherwise);
            - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
            - a Hub dataset name (``"lmms-lab/VQAv2"``), read with `datasets.load_dataset`;
            - a `datasets.Dataset` or `DatasetDict` object.
        image_column (`str`, *optional*, defaults to ``"image"``): the column (or JSONL key) holding the image: a
            `datasets.Image` feature, a PIL image or a file path.
        question_column (`str`, *optional*, defaults to ``"question"``): the column (or JSONL key) with the question.
        id_column (`str`, *optional*): a column (or JSONL key) with unique example ids (``"question_id"`` for VQAv2);
            row numbers otherwise.
        split (`str`, *optional*): the split of a `DatasetDict` or Hub dataset (defaults to ``"train"``, or the only
            split).
        questions_file (`str`, *optional*): the JSONL file of an image folder (a name inside it or a path).
        limit (`int`, *optional*): keep only the first `limit` examples.
        load_dataset_kwargs: passed to `datasets.load_dataset` (``name``, ``revision``, ``streaming`` is not
            supported).

    Raises:
        ValueError: when the image or question column is missing (naming the columns there are), for duplicated
            ids, or for an empty corpus.
    """
    if isinstance(corpus, (str, os.PathLike)):
        path = os.fspath(corpus)
        if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, m)) for m in _DATASET_MARKERS):
            return _load_image_folder(path, image_column, question_column, id_column, questions_file, limit)
        if questions_file is not None:
            raise ValueError(f"`questions_file` is only for a folder of images, but {path!r} is a dataset.")
        dataset = _open_dataset(path, split, **load_dataset_kwargs)
        description = path
    else:
        description = getattr(getattr(corpus, "info", None), "dataset_name", None) or type(corpus).__name__
        dataset = _pick_split(corpus, split, description)
    return _from_dataset(dataset, image_column, question_column, id_column, limit, description)


def _open_dataset(path: str, split: str | None, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a declared extra
        raise ImportError("Reading a dataset corpus needs `datasets`: pip install 'hf_fastrm[data]'.") from error
    if os.path.isdir(path):
        dataset = datasets.load_from_disk(path)
    else:
        if kwargs.get("streaming"):
            raise ValueError("Streaming datasets are not supported: distillation needs random access to resume.")
        dataset = (
            datasets.load_dataset(path, split=split, **kwargs) if split else datasets.load_dataset(path, **kwargs)
        )
    return _pick_split(dataset, split, path)


def _pick_split(dataset: Any, split: str | None, description: str) -> Any:
    if not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
        splits = list(dataset.keys())
        if split is None:
            if "train" in splits:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise ValueError(f"The corpus {description!r} has splits {splits}: choose one with `split`.")
        if split not in splits:
            raise ValueError(f"The corpus {description!r} has no split {split!r}; it has {splits}.")
        dataset = dataset[split]
    return dataset


def _from_dataset(
    dataset: Any,
    image_column: str,
    question_column: str,
    id_column: str | None,
    limit: int | None,
    description: str,
) -> Corpus:
    columns = list(dataset.column_names)
    for role, column, option in (
        ("image", image_column, "image_column / --image-column"),
        ("question", question_column, "question_column / --question-column"),
        ("example id", id_column, "id_column / --id-column"),
    ):
        if column is not None and column not in columns:
            raise ValueError(
                f"The corpus {description!r} has no {role} column {column!r}; its columns are {columns}. Name the "
                f"right one with `{option}`."
            )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"The corpus {description!r} is empty.")
    questions = [str(q) for q in dataset[question_column]]
    ids = [str(i) for i in dataset[id_column]] if id_column else [str(i) for i in range(len(dataset))]
    image_dataset = dataset.select_columns([image_column])

    def get_image(index: int) -> Any:
        return _to_rgb(image_dataset[index][image_column], base_dir=None, example_id=ids[index])

    return Corpus(ids, get_image, questions, description)


def _load_image_folder(
    folder: str,
    image_key: str,
    question_key: str,
    id_key: str | None,
    questions_file: str | None,
    limit: int | None,
) -> Corpus:
    if questions_file is None:
        candidates = sorted(name for name in os.listdir(folder) if name.endswith(".jsonl"))
        if DEFAULT_QUESTIONS_FILE in candidates:
            questions_file = DEFAULT_QUESTIONS_FILE
        elif len(candidates) == 1:
            questions_file = candidates[0]
        else:
            raise ValueError(
                f"The folder {folder!r} is neither a saved `datasets` dataset nor a folder of images with one JSONL "
                f"file of questions (found {candidates or 'no .jsonl file'}). Add {DEFAULT_QUESTIONS_FILE!r} with "
                'lines {"image": "file.png", "question": "..."}, or name it with `questions_file`.'
            )
    path = questions_file if os.path.isabs(questions_file) else os.path.join(folder, questions_file)
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path!r} line {line_number} is not valid JSON ({error}).") from error
            for role, key, option in (
                ("image", image_key, "--image-column"),
                ("question", question_key, "--question-column"),
            ):
                if key not in record:
                    raise ValueError(
                        f"{path!r} line {line_number} has no {role} key {key!r} (keys: {sorted(record)}). Each line "
                        f"needs an image file and a question; name other keys with `{option}`."
                    )
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"{path!r} holds no question.")
    id_key = id_key or ("id" if all("id" in record for record in records) else None)
    ids = [str(record[id_key]) for record in records] if id_key else [str(i) for i in range(len(records))]
    for record in records:
        image_path = os.path.join(folder, str(record[image_key]))
        if not os.path.isfile(image_path):
            raise ValueError(f"{path!r} names the image {record[image_key]!r}, which is not in {folder!r}.")
    images = [str(record[image_key]) for record in records]
    questions = [str(record[question_key]) for record in records]

    def get_image(index: int) -> Any:
        return _to_rgb(images[index], base_dir=folder, example_id=ids[index])

    return Corpus(ids, get_image, questions, folder)


def _to_rgb(value: Any, base_dir: str | None, example_id: str) -> Any:
    from PIL import Image

    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value["path"]
    if isinstance(value, (str, os.PathLike)):
        path = os.path.join(base_dir, value) if base_dir and not os.path.isabs(value) else os.fspath(value)
        with Image.open(path) as image:
            return image.convert("RGB")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    raise ValueError(
        f"Example {example_id!r}: the image column holds a {type(value).__name__}, not an image (a `datasets.Image` "
        "feature, a PIL image or a file path)."
    )


def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    duplicates = []
    for value in values:
        if value in seen:
            duplicates.append(value)
        seen.add(value)
    return duplicates
