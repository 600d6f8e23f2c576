"""sttabt train (concrete, LTP) on a tiny random BERT: checkpoints, CLI round trips, phases, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_task import tiny_approx_dir, tiny_classifier, tiny_sst2

from sttabt.api import CONFIG_NAME, STATE_NAME, PrunedClassifier
from sttabt.cli import main
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.train import learned
from sttabt.train.learned import LOG_NAME, LearnedConfig, train_learned


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("teacher"), 0)


@pytest.fixture(scope="module")
def approx(teacher, tmp_path_factory) -> Path:
    return tiny_approx_dir(teacher, tmp_path_factory.mktemp("approx"))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return tiny_sst2(tmp_path_factory.mktemp("glue"))


def _config(method: str, teacher: Path, glue_dir: Path, output: Path, **kwargs) -> LearnedConfig:
    defaults = {"batch_size": 8, "max_length": 32, "device": "cpu", "progress": False, "lr": 1e-3}
    if method == "concrete":
        defaults["epochs"] = 1
    return LearnedConfig(method=method, model=str(teacher), task="sst2", output=str(output),
                         data_dir=str(glue_dir), **{**defaults, **kwargs})  # fmt: skip


@pytest.fixture(scope="module")
def concrete_dir(teacher, approx, glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "concrete"
    train_learned(_config("concrete", teacher, glue_dir, out, approx=str(approx), p_init=-0.5))
    return out


@pytest.fixture(scope="module")
def ltp_dir(teacher, glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ltp"
    train_learned(_config("ltp", teacher, glue_dir, out, temperature=1e-2, lambda_=0.5))
    return out


def _batch(directory: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = ["the film was good", "a very bad plot the film", "awful", "the plot was fine and very great"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def _evaluate(directory: Path, glue_dir: Path, method: str, out: Path, *extra: str) -> int:
    return main(
        [
            "evaluate",
            "--model",
            str(directory),
            "--task",
            "sst2",
            "--data-dir",
            str(glue_dir),
            "--method",
            method,
            "--device",
            "cpu",
            "--max-length",
            "32",
            "--no-progress",
            "--output",
            str(out),
            *extra,
        ]
    )


# -- checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["concrete", "ltp"])
def test_checkpoint_layout_and_identical_logits_on_every_path(method, concrete_dir, ltp_dir):
    directory = concrete_dir if method == "concrete" else ltp_dir
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", CONFIG_NAME, STATE_NAME, LOG_NAME} <= files
    assert not any(name.endswith(".bin") for name in files)
    assert ("approxnet" in files) == (method == "concrete")
    saved = json.loads((directory / CONFIG_NAME).read_text())
    assert saved["method"] == method and saved["format_version"] == 1
    key = "p_logits" if method == "concrete" else "thresholds"
    assert saved["state"] == {key: [3]} and saved["method_config"]
    log = json.loads((directory / LOG_NAME).read_text())
    assert load_file(directory / STATE_NAME)[key].tolist() == pytest.approx(log["state"][key])

    batch = _batch(directory)
    pruned = PrunedClassifier.from_pretrained(directory)
    out = pruned(batch)
    from sttabt.models import load_text_classifier  # the evaluate/bench path: the factory reads the dir
    from sttabt.runtime import SparseEncoder

    model, _ = load_text_classifier(str(directory))
    adapter = pruned.adapter.__class__(model.eval())
    with torch.no_grad():
        again = SparseEncoder(adapter)(dict(batch), build_selector(method, adapter, MethodOptions()))
    assert torch.equal(out.logits, again.logits)
    assert all(torch.equal(a, b) for a, b in zip(out.key_sets, again.key_sets, strict=True))
    assert float(out.retention().mean()) < 1.0  # the learned state prunes


def test_concrete_hard_sets_equal_the_masked_hard_formulation(concrete_dir):
    from sttabt.methods.concrete import ConcreteState, concrete_forward
    from sttabt.runtime import SparseEncoder

    pruned = PrunedClassifier.from_pretrained(concrete_dir)
    state = ConcreteState(3).load_state_tensors(dict(pruned.method_state))
    batch = dict(_batch(concrete_dir))
    with torch.no_grad():
        masked = concrete_forward(
            pruned.adapter, SparseEncoder(pruned.approx.adapter), state, batch, hard=True
        )
    torch.testing.assert_close(pruned(batch).logits, masked.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["concrete", "ltp"])
def test_evaluate_cli_needs_nothing_but_the_directory(method, concrete_dir, ltp_dir, glue_dir, tmp_path):
    directory = concrete_dir if method == "concrete" else ltp_dir
    assert _evaluate(directory, glue_dir, method, tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    log = json.loads((directory / LOG_NAME).read_text())
    assert report["metrics"] == pytest.approx(log["dev"]["metrics"])  # the same model as in training
    assert report["retention"] == pytest.approx(log["dev"]["retention"])
    assert report["retention"] < 1.0


def test_bench_cli_loads_the_directory(concrete_dir, tmp_path):
    argv = [
        "bench",
        "--model",
        str(concrete_dir),
        "--method",
        "concrete",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "b.json"),
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "b.json").read_text())["method"] == "concrete"


def test_a_model_trained_with_one_method_is_refused_as_another(
    concrete_dir, ltp_dir, glue_dir, tmp_path, capsys
):
    assert (
        _evaluate(
            ltp_dir, glue_dir, "concrete", tmp_path / "r.json", "--approx", str(concrete_dir / "approxnet")
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trained with method 'ltp'" in err
    assert _evaluate(concrete_dir, glue_dir, "ltp", tmp_path / "r.json") == 2
    assert "trained with method 'concrete'" in capsys.readouterr().err
    with pytest.raises(SttabtError, match="trained with method 'concrete'"):
        PrunedClassifier.from_pretrained(concrete_dir, method="ltp")
    pruned = PrunedClassifier.from_pretrained(ltp_dir)
    pruned.method = "concrete"
    with pytest.raises(SttabtError, match="trained with method 'ltp'"):
        pruned(_batch(ltp_dir))
    assert _evaluate(ltp_dir, glue_dir, "dense", tmp_path / "d.json") == 0  # the backbone alone is fine


def test_missing_or_mismatched_method_state_is_one_line(concrete_dir, approx, glue_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(concrete_dir, broken)
    (broken / STATE_NAME).unlink()
    with pytest.raises(SttabtError, match="sttabt_state.safetensors listed in sttabt_config.json is missing"):
        PrunedClassifier.from_pretrained(broken)
    assert _evaluate(broken, glue_dir, "concrete", tmp_path / "r.json") == 2
    assert "is missing" in capsys.readouterr().err
    shutil.copy(concrete_dir / STATE_NAME, broken / STATE_NAME)
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["state"] = {"p_logits": [5]}
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SttabtError, match="does not match"):
        PrunedClassifier.from_pretrained(broken)
    # the teacher's own (untrained) ApproxNet does not fit the trained backbone
    assert _evaluate(concrete_dir, glue_dir, "concrete", tmp_path / "r.json", "--approx", str(approx)) == 2
    assert "not from this teacher" in capsys.readouterr().err


# -- training -----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_checkpoints(teacher, glue_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        train_learned(_config("ltp", teacher, glue_dir, out, temperature=1e-2, eval_dev=False))
    for name in ("model.safetensors", STATE_NAME):
        a, b = (load_file(out / name) for out in outs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_concrete_trains_hard_for_the_last_fraction_of_steps(
    teacher, approx, glue_dir, tmp_path, monkeypatch
):
    seen = []
    real = learned.concrete_forward

    def spy(*args, hard=False, **kwargs):
        if torch.is_grad_enabled():
            seen.append(hard)
        return real(*args, hard=hard, **kwargs)

    monkeypatch.setattr(learned, "concrete_forward", spy)
    config = _config("concrete", teacher, glue_dir, tmp_path / "c", approx=str(approx), epochs=2,
                     hard_fraction=0.25, eval_dev=False)  # fmt: skip
    record = train_learned(config)
    steps = 2 * 6  # 43 train examples (48 - 10 % held out) in batches of 8, two epochs
    assert seen == [False] * 9 + [True] * 3 and record["stages"][0]["hard_from_step"] == 9
    assert record["stages"][0]["result"]["steps"] == steps
    epochs = record["stages"][0]["result"]["epochs"]
    assert epochs[0]["train_hard"] == 0.0 and 0.0 < epochs[1]["train_hard"] < 1.0


def test_ltp_freezes_thresholds_for_the_hard_stage(teacher, glue_dir, tmp_path, monkeypatch):
    seen = []
    real = learned.ltp_masked_forward

    def spy(adapter, batch, thresholds, *, hard=False, **kwargs):
        if torch.is_grad_enabled():
            seen.append((hard, thresholds.detach().clone()))
        return real(adapter, batch, thresholds, hard=hard, **kwargs)

    monkeypatch.setattr(learned, "ltp_masked_forward", spy)
    record = train_learned(_config("ltp", teacher, glue_dir, tmp_path / "l", hard_epochs=1, eval_dev=False))
    soft = [t for hard, t in seen if not hard]
    hard = [t for hard, t in seen if hard]
    assert len(soft) == len(hard) == 6
    assert not torch.equal(soft[0], soft[-1])  # stage 1 learns the thresholds
    assert all(torch.equal(t, hard[0]) for t in hard)  # stage 2 keeps them
    assert [s["name"] for s in record["stages"]] == ["LTP stage 1 (soft)", "LTP stage 2 (hard)"]
    assert record["stages"][1]["result"]["evaluations"][0]["epoch"] == 0.0  # stage 1's end is a candidate
    assert record["state"]["thresholds"] == pytest.approx(hard[0].tolist())


def test_an_interrupted_save_leaves_no_directory(teacher, glue_dir, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "ltp"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(learned, "atomic_write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        train_learned(_config("ltp", teacher, glue_dir, out, hard_epochs=0, eval_dev=False))
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_mismatched_approxnet_is_refused(teacher, glue_dir, tmp_path_factory, capsys):
    other = tiny_classifier(tmp_path_factory.mktemp("other"), 5)
    foreign = tiny_approx_dir(other, tmp_path_factory.mktemp("foreign"))
    out = tmp_path_factory.mktemp("x") / "c"
    argv = [
        "train",
        "--method",
        "concrete",
        "--model",
        str(teacher),
        "--approx",
        str(foreign),
        "--task",
        "sst2",
        "--data-dir",
        str(glue_dir),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--max-length",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not from this teacher" in err and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "concrete", "--p-init", "11"], "p_init must be in"),
        (["--method", "concrete", "--p-init", "nan"], "p_init must be a finite number"),
        (["--method", "ltp", "--lambda", "-1"], "lambda must be a number in [0, inf]"),
        (["--method", "ltp", "--temperature", "0"], "temperature must be a positive number"),
        (["--method", "ltp", "--p-init", "-1"], "--p-init is for method 'concrete'"),
        (["--method", "concrete", "--lambda", "0.1"], "--lambda is for method 'ltp'"),
        (["--method", "concrete", "--temperature", "1e-3"], "--temperature is for method 'ltp'"),
        (["--method", "ltp", "--approx", "x"], "--approx is for method 'concrete'"),
        (["--method", "concrete", "--hard-fraction", "1.5"], "hard_fraction must be in [0, 1]"),
        (["--method", "abt"], "unknown method 'abt' to train"),
        (["--method", "ltp", "--lr", "0"], "--lr must be a positive number"),
        (["--method", "ltp", "--dtype", "fp16", "--device", "cpu"], "fp16 autocast is not supported on CPU"),
        (["--method", "ltp", "--max-length", "999"], "exceeds the model's maximum"),
    ],
)
def test_bad_arguments_fail_before_loading(
    args, message, teacher, approx, glue_dir, tmp_path, capsys, monkeypatch
):
    import sttabt.models

    monkeypatch.setattr(sttabt.models, "load_text_classifier", lambda *a, **k: pytest.fail("loaded a model"))
    if args[1] == "concrete" and "--approx" not in args:
        args = [*args, "--approx", str(approx)]
    argv = ["train", *args, "--model", str(teacher), "--task", "sst2", "--data-dir", str(glue_dir),
            "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_output_rules(teacher, approx, glue_dir, tmp_path, capsys):
    base = [
        "train",
        "--method",
        "ltp",
        "--task",
        "sst2",
        "--data-dir",
        str(glue_dir),
        "--model",
        str(teacher),
    ]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([*base, "--output", str(mine)]) == 2
    assert "not empty and not an earlier output" in capsys.readouterr().err
    assert main([*base, "--output", str(teacher), "--overwrite"]) == 2
    assert "--output is the --model directory" in capsys.readouterr().err
    assert main(["train", "--method", "concrete", "--task", "sst2", "--model", str(teacher), "--output",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "needs --approx DIR" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
