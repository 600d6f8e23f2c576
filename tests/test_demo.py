"""The demo's command line: one-line errors before any work, Ctrl-C, and the line that reads its table."""

from __future__ import annotations

import pytest

from sttabt import demo


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keeps", "abc"], "demo: error: --keeps must be a comma list of ratios in (0, 1], got 'abc'"),
        (["--keeps", "0.3,2"], "demo: error: --keeps: keep ratio must be in (0, 1], got 2.0"),
        (["--max-length", "100000"], "demo: error: --max-length 100000 exceeds the model's maximum of 512"),
        (["--limit", "x"], "demo: error: --limit must be a whole number, got 'x'"),
        (["--device", "tpu"], "demo: error: --device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--train-dtype", "fp8"], "demo: error: argument --train-dtype: invalid choice"),
        (["--distill-lr", "-1"], "demo: error: --distill-lr must be in (0, 1), got -1.0"),
    ],
)
def test_bad_arguments_are_one_line_before_any_work(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "run_demo", lambda args: pytest.fail("the demo started"))
    with pytest.raises(SystemExit) as info:
        code = demo.main([*argv, "--workdir", str(tmp_path / "w")])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "w").exists()


def test_ctrl_c_is_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert demo.main([]) == 130
    err = capsys.readouterr().err
    assert err == "demo: interrupted; finished steps stay cached, rerun to continue\n"


def _rows(topk_acc: str, topk_flops: str) -> list[dict]:
    def row(method, acc, flops, speed):
        return {"method": method, "accuracy %": acc, "rel. FLOPs %": flops, "speed-up": speed}

    return [
        row("dense", "93.92", "85.9", "1.02x"),
        row("ABT k=0.3", "92.79", "38.1", "1.80x"),
        row("ABT k=0.15", "92.12", "24.1", "2.40x"),
        row("top-k @ret 0.38", topk_acc, topk_flops, "2.6x"),
    ]


def test_what_it_shows_reads_the_table():
    line = demo.what_it_shows(_rows("94.14", "34.8"))
    assert line.startswith("What the table shows (accuracy vs dense 93.92 %): ABT k=0.3 -1.13 points at 38 %")
    assert "ABT k=0.15 -1.80 points at 24 % FLOPs (2.40x)" in line and "top-k +0.22 at 35 %" in line
    assert line.endswith("top-k matches or beats ABT k=0.3 at equal or lower FLOPs on this easy topic task.")
    assert demo.what_it_shows(_rows("90.00", "40.0")).endswith(
        "ABT k=0.3 beats top-k at equal or lower FLOPs."
    )
    assert demo.what_it_shows(_rows("95.00", "45.0")).endswith("trade accuracy for FLOPs.")
    assert "\n" not in line
