"""FastRMConfig: every field type-checked on load, errors naming the file and the field; unknown keys dropped."""

import json

import pytest
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from hf_fastrm import FastRMConfig, FastRMHead
from hf_fastrm.testing_utils import tiny_head, tiny_llava


@pytest.fixture(scope="module")
def saved_head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head")
    tiny_head(tiny_llava(seed=0)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", "32"),
        ("hidden_size", 0),
        ("head_dim", True),  # bool is not an int
        ("head_dim", 16.0),
        ("layer_norm_eps", "abc"),
        ("layer_norm_eps", 0),
        ("layer_norm_eps", False),
        ("label_threshold", "0.3"),
        ("label_threshold", 1.5),
        ("feature_layer", "-1"),
        ("feature_layer", 3),
        ("metrics", "good"),
        ("metrics", {"f1": "high"}),
        ("metrics", {"f1": True}),
        ("model_type", 5),
        ("base_model_name_or_path", ["org/model"]),
        ("base_model_revision", 1),
        ("fastrm_version", 0.1),
    ],
)
def test_bad_field_is_refused_on_load_naming_file_and_field(tmp_path, saved_head, field, value):
    folder = tmp_path / "head"
    folder.mkdir()
    config = json.loads((saved_head / "fastrm_config.json").read_text())
    config[field] = value
    (folder / "fastrm_config.json").write_text(json.dumps(config))
    (folder / "fastrm_head.safetensors").write_bytes((saved_head / "fastrm_head.safetensors").read_bytes())
    with pytest.raises(ValueError) as error:
        FastRMHead.from_pretrained(folder)
    message = str(error.value)
    assert str(folder / "fastrm_config.json") in message and f"`{field}" in message


def test_valid_config_loads_and_numbers_stay_plain(saved_head):
    import numpy as np

    head = FastRMHead.from_pretrained(saved_head)
    assert head.config.head_dim == 16 and head.config.layer_norm_eps == pytest.approx(1e-5)
    config = FastRMConfig(hidden_size=np.int64(32), head_dim=8, label_threshold=np.float32(0.25), metrics={"f1": 1})
    assert type(config.hidden_size) is int and type(config.label_threshold) is float
    json.loads(config.to_json_string())  # numpy scalars would not serialise


def test_unknown_keys_are_dropped_with_a_warning(tmp_path):
    path = tmp_path / "fastrm_config.json"
    path.write_text(json.dumps({"hidden_size": 32, "head_dim": 8, "from_the_future": 1}))
    with CaptureLogger(logging.get_logger("hf_fastrm.config")) as captured:
        config = FastRMConfig.from_json_file(path)
    assert config.hidden_size == 32 and "from_the_future" in captured.out
    assert not hasattr(config, "from_the_future")
