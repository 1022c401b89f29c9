import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_fastrm import FastRMConfig, FastRMHead
from hf_fastrm.constants import CONFIG_NAME, WEIGHTS_NAME
from hf_fastrm.testing_utils import tiny_head


def test_forward_matches_precomputed_keys_and_is_a_probability():
    head = FastRMHead(FastRMConfig(hidden_size=32, head_dim=8))
    tokens, images = torch.randn(3, 4, 32), torch.randn(3, 10, 32)
    full = head(tokens, images)
    assert full.shape == (3, 4, 10)
    assert torch.all((full >= 0) & (full <= 1))
    keys = head.image_keys(images)
    for t in range(4):
        torch.testing.assert_close(head.relevance_from_keys(tokens[:, t], keys), full[:, t])
    torch.testing.assert_close(torch.sigmoid(head.logits(tokens, images)), full)


def test_save_load_round_trip_is_bit_identical(tmp_path, llava):
    head = tiny_head(llava)
    head.config.metrics = {"f1": 0.5}
    head.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md"])
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tmp_path):  # readable like any file the user writes, not owner-only temp files
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    saved = load_file(tmp_path / WEIGHTS_NAME)
    # only the head: a handful of tensors of the head's own shapes, nothing of the base model
    assert set(saved) == set(head.state_dict())
    loaded = FastRMHead.from_pretrained(tmp_path)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.config == head.config
    card = (tmp_path / "README.md").read_text()
    assert "library_name: hf_fastrm" in card and "base_model: hf-fastrm/tiny-llava" in card and "f1" in card
    config_text = (tmp_path / CONFIG_NAME).read_text()
    assert list(json.loads(config_text)) == sorted(json.loads(config_text))


def test_unknown_config_keys_load_with_a_warning(tmp_path, llava, caplog):
    tiny_head(llava).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["added_in_a_future_version"] = 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    from transformers.utils import logging

    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            FastRMHead.from_pretrained(tmp_path)
    finally:
        logging.disable_propagation()
    assert "added_in_a_future_version" in caplog.text


@pytest.mark.parametrize("broken", [CONFIG_NAME, WEIGHTS_NAME])
def test_corrupt_files_are_named_in_the_error(tmp_path, llava, broken):
    tiny_head(llava).save_pretrained(tmp_path)
    data = (tmp_path / broken).read_bytes()
    (tmp_path / broken).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=broken.replace(".", r"\.")):
        FastRMHead.from_pretrained(tmp_path)


def test_missing_file_in_local_folder(tmp_path, llava):
    tiny_head(llava).save_pretrained(tmp_path)
    os.remove(tmp_path / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        FastRMHead.from_pretrained(tmp_path)


def test_failed_save_leaves_nothing_half_written(tmp_path, llava, monkeypatch):
    head = tiny_head(llava)

    def exploding_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hf_fastrm.head.save_file", exploding_save)
    with pytest.raises(OSError):
        head.save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == []


def _hand_made_cache(cache_dir, repo_id, head_dir, commit="0123456789abcdef0123456789abcdef01234567", subfolder=None):
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    target = snapshot / subfolder if subfolder else snapshot
    shutil.copytree(head_dir, target)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_loads_from_hand_made_hf_cache_offline(tmp_path, llava, monkeypatch):
    head = tiny_head(llava)
    head.save_pretrained(tmp_path / "head")
    cache = tmp_path / "cache"
    commit = _hand_made_cache(cache, "org/fastrm-tiny", tmp_path / "head")
    _hand_made_cache(cache / "sub", "org/fastrm-tiny", tmp_path / "head", subfolder="heads/v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for kwargs in ({}, {"revision": commit}, {"local_files_only": True}):
        loaded = FastRMHead.from_pretrained("org/fastrm-tiny", cache_dir=cache, **kwargs)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in head.state_dict().items())
    loaded = FastRMHead.from_pretrained("org/fastrm-tiny", cache_dir=cache / "sub", subfolder="heads/v1")
    assert torch.equal(loaded.query.weight, head.query.weight)
    with pytest.raises(FileNotFoundError, match="cache"):
        FastRMHead.from_pretrained("org/not-cached", cache_dir=cache)


def test_incompatible_heads_are_refused_naming_both(llava):
    config = llava.config
    wide = FastRMHead(FastRMConfig(hidden_size=64, base_model_name_or_path="org/other-model"))
    with pytest.raises(ValueError, match=r"org/other-model.*hidden size 64.*tiny-llava.*hidden size 32"):
        wide.check_compatible(config)
    other_type = FastRMHead(FastRMConfig(hidden_size=32, model_type="qwen2_vl"))
    with pytest.raises(ValueError, match="qwen2_vl.*llava"):
        other_type.check_compatible(config)
    other_name = FastRMHead(FastRMConfig(hidden_size=32, model_type="llava", base_model_name_or_path="org/llava-13b"))
    with pytest.raises(ValueError, match=r"org/llava-13b.*tiny-llava.*check_base_model=False"):
        other_name.check_compatible(config)
    other_name.check_compatible(config, check_base_model=False)
    # a local copy of the right model (same last path component) is accepted
    FastRMHead(FastRMConfig(hidden_size=32, base_model_name_or_path="/models/tiny-llava")).check_compatible(config)


@pytest.mark.parametrize(
    "bad", [{"hidden_size": 0}, {"hidden_size": 8, "head_dim": -1}, {"hidden_size": 8, "label_threshold": 2.0}]
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        FastRMConfig(**bad)
