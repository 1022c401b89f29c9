"""Command-line options from argument dataclasses, by `transformers.HfArgumentParser`'s conventions, stdlib only.

`hf-fastrm <command> --help` must answer in well under a second, and importing transformers (for
`HfArgumentParser`) takes about 0.8 s by itself, so the CLI adds a dataclass's options with this function instead:
the same option names (``--name`` and ``--name-with-dashes``), types, defaults, choices, ``nargs`` and ``help`` from
field metadata, and for a boolean field that defaults to True a ``--no-name`` complement. A test parses the same
command lines with `HfArgumentParser` and with this, and compares the dataclasses; scripts can use
`HfArgumentParser(TrainArguments)` directly, as transformers' example scripts do with `TrainingArguments`.

Supported field types: `int`, `float`, `str`, `bool`, `X | None` of those, and `list[str]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _string_to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {value} but expected one of yes/no, true/false.")


def add_dataclass_arguments(parser: argparse.ArgumentParser | Any, dataclass_type: type) -> None:
    """Adds one option per field of `dataclass_type` to `parser` (see the module docstring)."""
    hints = typing.get_type_hints(dataclass_type)
    for field in dataclasses.fields(dataclass_type):
        if not field.init:
            continue
        field_type = hints[field.name]
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        kwargs = dict(field.metadata)
        aliases = kwargs.pop("aliases", [])
        args = typing.get_args(field_type)
        if type(None) in args and len(args) == 2:  # X | None
            field_type = next(arg for arg in args if arg is not type(None))
        if field_type is bool:
            kwargs.update(type=_string_to_bool, nargs="?", const=True, default=field.default)
        elif typing.get_origin(field_type) is list:
            kwargs.update(type=typing.get_args(field_type)[0], nargs="+")
            if field.default_factory is not dataclasses.MISSING:
                kwargs["default"] = field.default_factory()
            elif field.default is dataclasses.MISSING:
                kwargs["required"] = True
        else:
            kwargs["type"] = field_type
            if field.default is not dataclasses.MISSING:
                kwargs["default"] = field.default
            else:
                kwargs["required"] = True
        parser.add_argument(*options, *([aliases] if isinstance(aliases, str) else aliases), **kwargs)
        if field_type is bool and field.default is True:
            complement = {key: value for key, value in field.metadata.items() if key != "aliases"}
            parser.add_argument(
                f"--no_{field.name}",
                f"--no-{field.name.replace('_', '-')}",
                action="store_false",
                dest=field.name,
                **{**complement, "default": False},
            )


def dataclass_from_namespace(dataclass_type: type[T], namespace: argparse.Namespace) -> T:
    """The `dataclass_type` instance of the parsed options (other attributes of `namespace` are ignored)."""
    return dataclass_type(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(dataclass_type) if f.init})
