"""The options of `hf-fastrm distill`, `train` and `evaluate`, written once: dataclasses that `distill`, `train_head`
and `evaluate_head` take and the CLI turns into options (by `transformers.HfArgumentParser`'s conventions; see
`hf_fastrm.utils.arguments`). No torch import here, so `--help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import DEFAULT_HEAD_DIM, DEFAULT_LABEL_THRESHOLD

_MODEL_DTYPES = ["auto", "bfloat16", "float16", "float32"]


@dataclass
class TrainArguments:
    """What [`train_head`] trains on, where it writes, and how (AdamW, linear warm-up then cosine decay)."""

    shards: list[str] = field(metadata={"help": "Shard folder(s) written by `hf-fastrm distill`, all of one model."})
    output_dir: str = field(metadata={"help": "Where the best head, training_info.json and checkpoints/ go."})
    head_dim: int = field(default=DEFAULT_HEAD_DIM, metadata={"help": "Width k of the head."})
    label_threshold: float = field(
        default=DEFAULT_LABEL_THRESHOLD,
        metadata={"help": "Labels: min-max-normalised teacher maps at or above this."},
    )
    decision_threshold: float = field(
        default=0.5, metadata={"help": "Threshold on the head's relevance for the validation metrics."}
    )
    epochs: int = field(default=5, metadata={"help": "Passes over the training split."})
    batch_size: int = field(default=16, metadata={"help": "Examples per batch and process."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps with linear warm-up."})
    pos_weight: float | None = field(default=None, metadata={"help": "Loss weight of relevant patches."})
    val_fraction: float = field(default=0.05, metadata={"help": "Share of examples (by id) held out."})
    seed: int = field(default=0, metadata={"help": "Seeds the head's initialisation, the split and batch order."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Continue from the latest checkpoint in --output-dir (no value), or from the checkpoint given.",
            "nargs": "?",
            "const": "latest",
        },
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "As in accelerate.", "choices": ["no", "bf16", "fp16"]}
    )
    cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is there."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers reading the shards."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (0 keeps all)."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars (--no-show-progress hides)."})
    head_type: str = field(
        default="fastrm",
        metadata={
            "help": "'fastrm': the paper's head (default). 'question_aware': outside the paper's design, the head "
            "also attends over the prompt's text tokens' last hidden states (needs shards written by this version "
            "of `hf-fastrm distill`).",
            "choices": ["fastrm", "question_aware"],
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        self.shards = [str(path) for path in self.shards]
        self.output_dir = str(self.output_dir)
        if self.resume is True:
            self.resume = "latest"
        elif self.resume is False:
            self.resume = None
        for name in ("head_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must lie in [0, 1), got {self.val_fraction!r}.")
        if self.save_total_limit is None:
            self.save_total_limit = 0


@dataclass
class EvaluateArguments:
    """What [`evaluate_head`] compares: a head against the teacher maps of shards."""

    head: str = field(metadata={"help": "Head folder or Hub repo id."})
    shards: list[str] = field(metadata={"help": "Shard folder(s) of the head's model."})
    label_threshold: float | None = field(default=None, metadata={"help": "Default: the head's own."})
    decision_threshold: float = field(default=0.5, metadata={"help": "Threshold on the head's relevance."})
    split: str = field(
        default="all",
        metadata={"help": "All examples, or a part of train_head's split.", "choices": ["all", "train", "validation"]},
    )
    val_fraction: float | None = field(default=None, metadata={"help": "Of the split (default: the head's)."})
    seed: int | None = field(default=None, metadata={"help": "Of the split (default: the head's training seed)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per batch."})
    device: str | None = field(default=None, metadata={"help": "Device of the head (default: cpu)."})
    json_path: str | None = field(
        default=None, metadata={"help": "Also write the report to this JSON file.", "aliases": ["--json"]}
    )
    check_base_model: bool = field(
        default=True, metadata={"help": "Compare model names too (--no-check-base-model for a renamed copy)."}
    )
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars (--no-show-progress hides)."})

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        self.shards = [str(path) for path in self.shards]
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}.")


@dataclass
class DistillArguments:
    """What [`distill`] runs the teacher over, and how (the model, the corpus, generation, the shards)."""

    model: str = field(metadata={"help": "Hub id or folder of the vision-language model (or, in Python, a model)."})
    corpus: str = field(
        metadata={
            "help": "A `datasets` dataset name or saved folder with image and question columns, or a folder of "
            "images with a JSONL of {'image': file, 'question': text}."
        }
    )
    output_dir: str = field(metadata={"help": "Where the shards go (resumed if it holds some)."})
    revision: str | None = field(default=None, metadata={"help": "Revision (commit, tag, branch) of the model."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype of the model (bfloat16 on CUDA, float32 on CPU by default).",
            "choices": _MODEL_DTYPES,
        },
    )
    device: str | None = field(default=None, metadata={"help": "Device of the model (default: the process's device)."})
    device_map: str | None = field(
        default=None, metadata={"help": "`device_map` for models larger than one GPU ('auto')."}
    )
    image_column: str = field(default="image", metadata={"help": "Image column of a dataset."})
    question_column: str = field(default="question", metadata={"help": "Question column of a dataset."})
    id_column: str | None = field(
        default=None, metadata={"help": "Column of unique example ids (row numbers otherwise)."}
    )
    split: str | None = field(default=None, metadata={"help": "Dataset split (default: 'train' or the only one)."})
    questions_file: str | None = field(
        default=None, metadata={"help": "The JSONL of an image folder (default: the only one)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt with '{question}' and '{image}' (the image placeholder); default: the processor's chat "
            "template, else 'USER: {image}\\n{question} ASSISTANT:'."
        },
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Answer length limit (greedy decoding)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per generate + teacher call."})
    examples_per_shard: int = field(default=256, metadata={"help": "Examples per shard (the unit of resumption)."})
    storage_dtype: str = field(
        default="bfloat16",
        metadata={"help": "Dtype of the hidden states on disk.", "choices": ["bfloat16", "float16", "float32"]},
    )
    teacher_target: str = field(
        default="logit", metadata={"help": "What the teacher differentiates.", "choices": ["logit", "log_prob"]}
    )
    token_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per batched teacher backward (less memory when smaller; the teacher's default)."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show the progress bar (--no-show-progress hides)."})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "examples_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
