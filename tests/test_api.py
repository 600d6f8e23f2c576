"""The Python API: an nn.Module wrapper, a validated plain attribute for the budget, save/load round trips."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import sttabt
from sttabt.api import APPROX_DIR, CONFIG_NAME, STATE_NAME
from sttabt.approxnet import ApproxNet


def _model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        num_labels=3, initializer_range=0.3,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def approx(model):
    torch.manual_seed(1)
    return ApproxNet.from_teacher(model, 2)


def _batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (3, 20), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_dense_wrapper_matches_model_and_leaves_it_unchanged(model):
    batch = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = sttabt.PrunedClassifier(model)
    out = pruned(batch)
    with torch.no_grad():
        reference = model(**batch).logits
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_budget_is_a_plain_attribute(model):
    batch = _batch()
    pruned = sttabt.PrunedClassifier(model, method="topk", keep=0.5)
    half = pruned(batch)
    pruned.keep = 0.2
    fifth = pruned(batch)
    assert fifth.cost.flops.sum() < half.cost.flops.sum()
    assert (fifth.retention() <= half.retention() + 1e-9).all()
    kept = fifth.kept_positions(1)
    assert len(kept) == model.config.num_hidden_layers + 1
    assert kept[-1] == [0]
    assert all(0 in layer for layer in kept)
    assert all(max(layer) < 12 for layer in kept)  # padding of sample 1 is never kept


def test_it_is_a_module_with_the_approxnet_inside(model, approx):
    pruned = sttabt.PrunedClassifier(model, method="abt", keep=0.3, approx=approx)
    assert isinstance(pruned, torch.nn.Module)
    assert pruned.eval() is pruned and not pruned.training and not approx.training
    assert pruned.to("cpu") is pruned
    keys = pruned.state_dict().keys()
    assert any(k.startswith("model.bert.") for k in keys) and any(k.startswith("approx.model.") for k in keys)
    assert "method='abt'" in repr(pruned) and "keep=0.3" in repr(pruned)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nosuch"}, "unknown method 'nosuch'; choose one of"),
        ({"method": "topk", "keep": 5}, r"keep: keep ratio must be in \(0, 1\]"),
        ({"method": "topk", "keep": ["a", "b"]}, "keep: keep ratio must be"),
        ({"method": "topk", "keep": [0.5, 0.5]}, "got 2 per-layer ratios for a model with 3 layers"),
        ({"method": "topk"}, "method 'topk' needs a keep ratio"),
        ({"method": "abt", "keep": 0.3}, "method 'abt' needs an ApproxNet"),
        ({"method": "topk", "keep": 0.3, "schedule": "fast"}, "schedule must be one of constant, reference"),
        ({"method": "topk", "keep": 0.3, "bogus": 1}, r"unknown option\(s\) bogus"),
        ({"method": "abt-oracle", "keep": 0.3, "p": float("nan")}, "p must be a finite number"),
        ({"method": "topk", "keep": "dynamic"}, "keep='dynamic' is for back-tracking methods"),
    ],
)
def test_bad_settings_fail_at_construction_in_api_words(model, kwargs, message):
    with pytest.raises(sttabt.SttabtError, match=message) as info:
        sttabt.PrunedClassifier(model, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "--" not in text  # one line, no CLI option names


def test_every_attribute_change_is_validated(model):
    pruned = sttabt.PrunedClassifier(model, method="topk", keep=0.5)
    with pytest.raises(sttabt.SttabtError, match="keep ratio must be in"):
        pruned.keep = 5
    with pytest.raises(sttabt.SttabtError, match="needs a keep ratio"):
        pruned.keep = None
    with pytest.raises(sttabt.SttabtError, match="unknown method"):
        pruned.method = "nosuch"
    with pytest.raises(sttabt.SttabtError, match="needs an ApproxNet"):
        pruned.method = "abt"
    assert (pruned.method, pruned.keep) == ("topk", 0.5)  # a refused change leaves the old value
    pruned.keep = "0.25"  # text is parsed, as on the command line
    assert pruned.keep == 0.25
    pruned.method = "dense"
    pruned.keep = None
    assert pruned.options()["method"] == "dense"


def test_approxnet_of_another_teacher_is_refused(approx):
    with pytest.raises(sttabt.SttabtError, match="not from this teacher"):
        sttabt.PrunedClassifier(_model(seed=5), method="abt", keep=0.3, approx=approx)


def _equal_outputs(a, b) -> None:
    assert torch.equal(a.logits, b.logits)
    for x, y in zip(a.key_sets, b.key_sets, strict=True):
        assert torch.equal(x, y)


def test_save_and_load_round_trip_topk(model, tmp_path):
    pruned = sttabt.PrunedClassifier(model, method="topk", keep=[0.9, 0.6, 0.3], schedule="constant")
    pruned.save_pretrained(tmp_path / "topk")
    files = {p.name for p in (tmp_path / "topk").iterdir()}
    assert {"config.json", "model.safetensors", CONFIG_NAME} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files) and APPROX_DIR not in files
    saved = json.loads((tmp_path / "topk" / CONFIG_NAME).read_text())
    assert saved["format_version"] == 1 and saved["method"] == "topk" and saved["keep"] == [0.9, 0.6, 0.3]
    again = sttabt.PrunedClassifier.from_pretrained(tmp_path / "topk")
    assert again.options() == pruned.options() and not again.training
    _equal_outputs(pruned(_batch()), again(_batch()))
    assert sttabt.PrunedClassifier.from_pretrained(tmp_path / "topk", keep=0.2).keep == 0.2
    assert not list(tmp_path.glob(".topk*"))  # atomic: no temp directory left


def test_save_and_load_round_trip_abt_with_method_state(model, approx, tmp_path):
    pruned = sttabt.PrunedClassifier(model, method="abt", keep=0.3, approx=approx, p=0.2)
    pruned.method_state["p_logit"] = torch.nn.Parameter(torch.tensor([-1.0, 0.5, 2.0]), requires_grad=False)
    out = tmp_path / "abt"
    pruned.save_pretrained(out)
    assert (out / APPROX_DIR / "approxnet.json").is_file() and (out / STATE_NAME).is_file()
    again = sttabt.PrunedClassifier.from_pretrained(out)
    assert again.options() == pruned.options() and again.approx is not None
    assert torch.equal(again.method_state["p_logit"], pruned.method_state["p_logit"])
    _equal_outputs(pruned(_batch()), again(_batch()))
    from transformers import AutoModelForSequenceClassification

    backbone = AutoModelForSequenceClassification.from_pretrained(out)  # a normal HF directory
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone.state_dict().items())


def test_broken_saved_directories_are_one_line_errors(model, approx, tmp_path):
    good = tmp_path / "good"
    pruned = sttabt.PrunedClassifier(model, method="abt", keep=0.3, approx=approx)
    pruned.method_state["theta"] = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    pruned.save_pretrained(good)

    def broken(name: str):
        target = tmp_path / name
        shutil.copytree(good, target)
        return target

    cases = []
    target = broken("no-approx")
    shutil.rmtree(target / APPROX_DIR)
    cases.append((target, "approxnet/ listed in sttabt_config.json is missing"))
    target = broken("other-approx")
    shutil.rmtree(target / APPROX_DIR)
    ApproxNet.from_teacher(_model(seed=5), 2).save(target / APPROX_DIR)
    cases.append((target, "not from this teacher"))
    target = broken("no-state")
    (target / STATE_NAME).unlink()
    cases.append((target, "sttabt_state.safetensors listed in sttabt_config.json is missing"))
    target = broken("wrong-state")
    config = json.loads((target / CONFIG_NAME).read_text())
    config["state"] = {"theta": [4]}
    (target / CONFIG_NAME).write_text(json.dumps(config))
    cases.append((target, "does not match sttabt_config.json"))
    target = broken("future")
    (target / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    cases.append((target, "format version 99; this sttabt reads versions 1 to 1; upgrade sttabt"))
    target = broken("plain")
    (target / CONFIG_NAME).unlink()
    cases.append((target, "not a saved PrunedClassifier"))
    cases.append((tmp_path / "missing", "does not exist"))
    for path, message in cases:
        with pytest.raises(sttabt.SttabtError, match=message) as info:
            sttabt.PrunedClassifier.from_pretrained(path)
        assert "\n" not in str(info.value), path
