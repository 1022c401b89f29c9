"""The CLI's options come from the argument dataclasses and parse as transformers.HfArgumentParser parses them."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

import hf_fastrm
from hf_fastrm.distill.arguments import DistillArguments, EvaluateArguments, TrainArguments
from hf_fastrm.utils.arguments import add_dataclass_arguments, dataclass_from_namespace

COMMAND_LINES = [
    (DistillArguments, ["--model", "m", "--corpus", "c", "--output-dir", "o"]),
    (
        DistillArguments,
        [
            "--model",
            "m",
            "--corpus",
            "c",
            "--output_dir",
            "o",
            "--dtype",
            "bfloat16",
            "--limit",
            "5",
            "--token-chunk-size",
            "2",
            "--teacher-target",
            "log_prob",
            "--no-show-progress",
        ],
    ),
    (TrainArguments, ["--shards", "a", "b", "--output-dir", "out"]),
    (
        TrainArguments,
        ["--shards", "a", "--output_dir", "out", "--epochs", "3", "--pos-weight", "2.5", "--resume", "--cpu"],
    ),
    (TrainArguments, ["--shards", "a", "--output-dir", "o", "--resume", "ckpt/epoch-2", "--no-show-progress"]),
    (TrainArguments, ["--shards", "a", "--output-dir", "o", "--mixed-precision", "bf16", "--show-progress", "false"]),
    (EvaluateArguments, ["--head", "h", "--shards", "s", "--json", "r.json", "--no-check-base-model"]),
    (EvaluateArguments, ["--head", "h", "--shards", "s", "--split", "validation", "--seed", "4", "--device", "cpu"]),
]


@pytest.mark.parametrize(("dataclass_type", "argv"), COMMAND_LINES)
def test_options_parse_as_hf_argument_parser_parses_them(dataclass_type, argv):
    (expected,) = HfArgumentParser(dataclass_type).parse_args_into_dataclasses(argv)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, dataclass_type)
    assert dataclass_from_namespace(dataclass_type, parser.parse_args(argv)) == expected


def test_bad_values_are_refused():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_dataclass_arguments(parser, TrainArguments)
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--shards", "a", "--output-dir", "o", "--mixed-precision", "fp8"])
    with pytest.raises(ValueError, match="`epochs` must be at least 1"):
        TrainArguments(shards=["a"], output_dir="o", epochs=0)


def test_the_distill_train_and_evaluate_options_load_without_torch_or_transformers():
    """What `--help` of these commands imports, apart from the package's own __init__ (made lazy elsewhere)."""
    package_dir = Path(hf_fastrm.__file__).parent
    code = (
        "import sys, types\n"
        "sys.modules['torch'] = sys.modules['transformers'] = None  # any import of them fails\n"
        "package = types.ModuleType('hf_fastrm')\n"
        f"package.__path__ = [{str(package_dir)!r}]\n"
        "sys.modules['hf_fastrm'] = package\n"
        "import argparse\n"
        "from hf_fastrm.commands import distill, evaluate, train\n"
        "subparsers = argparse.ArgumentParser().add_subparsers()\n"
        "train.register(subparsers)\n"
        "evaluate.register(subparsers)\n"
        "distill.register(subparsers)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
