"""`sttabt sweep --config`: a grid over training-free and learned methods on a tiny task, resumed, tabled."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_checks import one_line_error, run_cli
from tiny_task import tiny_approx_dir, tiny_classifier, tiny_sst2

from sttabt import grid
from sttabt.cli import main
from sttabt.errors import SttabtError
from sttabt.grid import GridPoint, cheapest_within, load_grid_config, pareto


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    teacher = tiny_classifier(tmp_path_factory.mktemp("teacher"), 0)
    return {"teacher": teacher, "approx": tiny_approx_dir(teacher, tmp_path_factory.mktemp("approx")),
            "glue": tiny_sst2(tmp_path_factory.mktemp("glue"))}  # fmt: skip


TOML = """
task = "sst2"
model = "{teacher}"
approx = "{approx}"
data_dir = "{glue}"
output_dir = "results"
models_dir = "models"
max_length = 32
batch_size = 4
device = "cpu"

[methods]
abt = {{ keep = [0.3, 0.6] }}
topk = {{ keep = [0.3] }}
concrete = {{ p_init = [-1, 1] }}
ltp = {{ lambda = [0.5], temperature = 0.01 }}

[train]
epochs = 1
batch_size = 8
lr = 1e-3

[latency]
batch_sizes = [1, 4]
examples = 4
repeats = 1
warmup = 0
"""


def _write(tmp_path: Path, task: dict[str, Path], text: str = TOML, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(**task))
    return path


def test_grid_runs_resumes_and_tables(task, tmp_path, monkeypatch):
    config_path = _write(tmp_path, task)
    assert main(["sweep", "--config", str(config_path)]) == 0
    out = tmp_path / "results"  # relative to the config file
    names = ["dense", "abt_k0.3", "abt_k0.6", "topk_k0.3", "concrete_p-1", "concrete_p1", "ltp_lambda0.5"]
    for name in names + ["abt-oracle_k0.3"]:  # top-k needs the oracle's retention (METHODS §1.6)
        assert (out / f"{name}.json").is_file(), name
    for stem in ("metric_vs_flops", "metric_vs_latency_fp32_b1", "metric_vs_latency_fp32_b4"):
        for fmt in ("png", "svg"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 1000
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["method"] for row in rows] == ["dense", "abt", "abt", "topk", "concrete", "concrete", "ltp"]
    assert 0.5 < float(rows[0]["relative_flops"]) <= 1.0  # the runtime's dense pass reads CLS only at the top
    assert all(float(row["speedup_fp32_b4"]) > 0 for row in rows)
    # The learned points trained into models_dir as complete PrunedClassifier directories.
    for name in ("concrete_p-1", "concrete_p1", "ltp_lambda0.5"):
        assert (tmp_path / "models" / name / "sttabt_config.json").is_file()
    concrete = json.loads((out / "concrete_p-1.json").read_text())
    assert concrete["grid"]["train_log"]["config"]["p_init"] == -1.0
    assert concrete["method"] == "concrete"
    summary = (out / "summary.md").read_text()
    assert "Cheapest point within 1 point of dense" in summary and "- concrete:" in summary

    # Resume: nothing is trained or evaluated again when every point file is there.
    def refuse(*args, **kwargs):
        raise AssertionError("a point ran again")

    monkeypatch.setattr("sttabt.train.learned.train_learned", refuse)
    monkeypatch.setattr("sttabt.evaluate.run_evaluation", refuse)
    assert main(["sweep", "--config", str(config_path)]) == 0

    # A point file made with other settings is refused, not silently mixed into the table.
    changed = TOML.replace("max_length = 32", "max_length = 24")
    with pytest.raises(SttabtError, match="other settings"):
        grid.run_grid(load_grid_config(_write(tmp_path, task, changed)))


def test_interrupted_grid_reruns_only_missing_points(task, tmp_path):
    text = TOML.split("[methods]")[0] + "[methods]\nabt = {{ keep = [0.3, 0.6] }}\n"
    config = load_grid_config(_write(tmp_path, task, text, "small.toml"))
    grid.run_grid(config)
    out = Path(config.output_dir)
    kept = (out / "abt_k0.3.json").read_text()
    (out / "abt_k0.6.json").unlink()  # as if the sweep had stopped before this point
    grid.run_grid(config)
    assert (out / "abt_k0.6.json").is_file()
    assert (out / "abt_k0.3.json").read_text() == kept  # reused, not re-run


def test_yaml_config_is_read_like_toml(task, tmp_path):
    yaml_text = (
        "task: sst2\nmodel: {teacher}\noutput_dir: out\ndata_dir: {glue}\ndevice: cpu\n"
        "methods:\n  topk:\n    keep: [0.5]\n"
    )
    config = load_grid_config(_write(tmp_path, task, yaml_text, "grid.yaml"))
    assert [p.name for p in config.points()] == ["dense", "topk_k0.5"]
    assert config.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("abt = {{ keep = [0.3, 0.6] }}", "abt = {{ keep = [0.3, 1.5] }}"), "keep"),
        (("abt = {{", "abtx = {{"), "unknown method 'abtx'"),
        (("concrete = {{ p_init = [-1, 1] }}", "concrete = {{ p_init = [-1, 99] }}"), "p_init"),
        (("ltp = {{ lambda = [0.5],", "ltp = {{ lambda = [-0.5],"), "lambda"),
        (("lr = 1e-3", "lr = 1e-3\nwarp = 2"), "unknown \\[train\\] setting 'warp'"),
        (("examples = 4", "examples = 2"), "latency.examples"),
        (('models_dir = "models"\n', ""), "models_dir"),
        (("max_length = 32", "max_length = 32\ncolour = 1"), "unknown setting 'colour'"),
        (("abt = {{ keep = [0.3, 0.6] }}", "abt = {{ keep = [0.3, 0.3] }}"), "twice"),
    ],
)
def test_bad_config_is_a_one_line_error_before_any_work(task, tmp_path, change, message, monkeypatch, capsys):
    monkeypatch.setattr("sttabt.models.load_text_classifier", lambda *a, **k: pytest.fail("loaded a model"))
    path = _write(tmp_path, task, TOML.replace(*change))
    with pytest.raises(SttabtError, match=message):
        load_grid_config(path)
    assert run_cli(["sweep", "--config", str(path)]) != 0
    assert message.split("'")[0].replace("\\", "") in one_line_error(capsys)


def test_config_and_flags_do_not_mix(task, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("task = [")
    cases = [
        (["--config", str(_write(tmp_path, task)), "--task", "rte"], "--task cannot be combined"),
        (["--config", str(tmp_path / "missing.toml")], "config file not found"),
        (["--config", str(bad)], "not valid TOML"),
        (["--task", "sst2"], "needs --model"),
    ]
    for argv, message in cases:
        assert run_cli(["sweep", *argv]) != 0
        assert message in one_line_error(capsys)


def test_pareto_and_cheapest_within():
    points = [(1.0, 0.90), (0.5, 0.89), (0.4, 0.85), (0.6, 0.88), (0.3, 0.80)]
    assert pareto(points) == [True, True, True, False, True]
    rows = [{"relative_flops": c, "score": s} for c, s in points]
    assert cheapest_within(rows, dense_score=0.90) == rows[1]  # 0.89 >= 0.90 - 0.01, cheapest such
    assert cheapest_within(rows[2:], dense_score=0.95) is None


def test_point_names_are_stable():
    assert GridPoint("abt", 0.3).name == "abt_k0.3"
    assert GridPoint("concrete", -1.5).name == "concrete_p-1.5"
    assert GridPoint("ltp", 0.01).name == "ltp_lambda0.01"
    assert GridPoint("dense").name == "dense"
