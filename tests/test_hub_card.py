"""Model cards through huggingface_hub.ModelCard: valid metadata, an existing card updated, not overwritten."""

from huggingface_hub import ModelCard

from hf_fastrm.testing_utils import tiny_head, tiny_llava


def _head():
    head = tiny_head(tiny_llava(seed=0))
    head.config.metrics = {"f1": 0.75}
    return head


def test_a_new_card_has_valid_hub_metadata(tmp_path):
    _head().save_pretrained(tmp_path, corpus="org/scenes")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "hf_fastrm" and data["base_model"] == "hf-fastrm/tiny-llava"
    assert data["datasets"] == ["org/scenes"] and "fastrm" in data["tags"]
    assert "| f1 | 0.7500 |" in card.text


def test_an_existing_card_is_updated_not_overwritten(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\ntags:\n- mine\n---\n\n# My head\n\nNotes the author wrote.\n", encoding="utf-8"
    )
    head = _head()
    head.save_pretrained(tmp_path)
    head.config.metrics = {"f1": 0.8}
    head.save_pretrained(tmp_path, corpus="org/scenes")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["tags"][0] == "mine" and "fastrm" in data["tags"]
    assert data["library_name"] == "hf_fastrm" and data["datasets"] == ["org/scenes"]
    assert "Notes the author wrote." in card.text
    assert card.text.count("## Details") == 1 and "| f1 | 0.8000 |" in card.text and "0.7500" not in card.text
