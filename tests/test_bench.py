"""``sttabt bench``: result fields, internal consistency, error handling and the CLI contract."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
import torch
from transformers import BertConfig

from sttabt.bench import BenchConfig, make_inputs, measure, run_benchmark
from sttabt.cli import build_parser, main
from sttabt.core.flops import EncoderShape, encoder_cost
from sttabt.errors import SttabtError


def tiny_config(layers: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=120,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
    )


def tiny_bench(**overrides) -> BenchConfig:
    settings = dict(
        model="tiny",
        method="topk",
        keep=0.5,
        batch_size=3,
        seq_len=16,
        warmup=1,
        repeats=4,
        threads=1,
        device="cpu",
        model_config=tiny_config(),
    )
    settings.update(overrides)
    return BenchConfig(**settings)


def test_result_fields_and_consistency(tmp_path):
    out = tmp_path / "bench.json"
    result = run_benchmark(tiny_bench(output=str(out)))
    saved = json.loads(out.read_text())
    assert saved["speedup"] == pytest.approx(result["speedup"])
    for key in (
        "model", "method", "options", "batch_size", "seq_len", "device", "device_info", "dtype", "threads",
        "versions", "warmup", "repeats", "timings", "speedup", "runtime_overhead", "flops", "ideal_speedup",
        "efficiency", "command",
    ):  # fmt: skip
        assert key in saved, key
    assert saved["device"] == "cpu" and saved["dtype"] == "fp32" and saved["threads"] == 1
    assert saved["options"]["keep"] == 0.5 and saved["method"] == "topk"
    assert {"torch", "transformers"} <= set(saved["versions"])
    assert saved["device_info"]["name"]
    # What decides reduced-precision speed on a CPU is recorded with every result.
    assert saved["device_info"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(saved["device_info"]["features"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert "inference_mode" in saved["protocol"]

    timings = saved["timings"]
    assert set(timings) == {"hf_dense", "runtime_dense", "method"}
    for stats in timings.values():
        assert len(stats["samples_ms"]) == 4
        assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
        assert stats["median_ms"] == pytest.approx(float(np.median(stats["samples_ms"])), abs=1e-3)

    hf, rt, method = (timings[k]["median_ms"] for k in ("hf_dense", "runtime_dense", "method"))
    flops = saved["flops"]
    assert saved["speedup"] == pytest.approx(hf / method)
    assert saved["runtime_overhead"] == pytest.approx(rt / hf)
    assert flops["relative"] == pytest.approx(flops["per_example"] / flops["dense_per_example"])
    assert saved["ideal_speedup"] == pytest.approx(1.0 / flops["relative"])
    assert saved["efficiency"] == pytest.approx(saved["speedup"] / saved["ideal_speedup"])

    # Dense FLOPs: every layer at the full real length (the unmodified model), independent of the runtime.
    shape = EncoderShape(2, 16, 32, 2, head_macs=16 * 16 + 16 * 2)
    full = torch.full((1, 2, 3), 16)
    assert flops["dense_per_example"] == pytest.approx(
        float(encoder_cost(shape, full, torch.tensor([16])).flops[0])
    )
    # top-k keep 0.5 at 16 tokens: layer 0 reads 16 and keeps 8; the last layer reads 8, computes CLS only.
    counts = torch.tensor([[[16, 16, 8], [8, 1, 1]]])
    # Top-k declares its scoring in layer 0: head mean (2 heads) and row mean over 16 x 16, ranking 16 keys.
    scoring = torch.tensor([2 * 16 * 16 + 16 * 16 + 16 * 4], dtype=torch.float64)
    expected = float(encoder_cost(shape, counts, torch.tensor([16]), overhead_flops=scoring).flops[0])
    assert flops["per_example"] == pytest.approx(expected)
    assert 0.0 < flops["relative"] < 1.0
    # The runtime's dense path reproduces the HF model.
    assert saved["logit_check"]["runtime_dense_vs_hf_max_abs_diff"] < 1e-4


def test_dense_method_has_relative_flops_of_runtime_dense():
    result = run_benchmark(tiny_bench(method="dense", keep=None, repeats=2))
    flops = result["flops"]
    assert flops["per_example"] == pytest.approx(flops["runtime_dense_per_example"])
    # The runtime computes only CLS in the last layer, so even "dense" is below the full model's FLOPs.
    assert flops["relative"] < 1.0


def test_threads_are_reported_and_restored():
    before = torch.get_num_threads()
    result = run_benchmark(tiny_bench(threads=1, repeats=1, warmup=0))
    assert result["threads"] == 1
    assert torch.get_num_threads() == before


def test_length_jitter_varies_real_lengths():
    result = run_benchmark(tiny_bench(batch_size=8, seq_len=40, length_jitter=0.5, repeats=1, warmup=0))
    inputs = result["inputs"]
    assert inputs["real_length_min"] >= math.ceil(0.5 * 40)
    assert inputs["real_length_max"] <= 40
    assert inputs["padded_length"] == inputs["real_length_max"]
    assert inputs["real_length_min"] < inputs["real_length_max"]  # 8 draws from [20, 40] with seed 0


def test_make_inputs_layout():
    config = tiny_bench(batch_size=5, seq_len=30, length_jitter=0.6)
    batch = make_inputs(
        config, vocab_size=120, cls_id=1, pad_id=0, generator=torch.Generator().manual_seed(3)
    )
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    assert bool((ids[:, 0] == 1).all())
    assert bool((ids[~mask] == 0).all())
    assert bool((ids[mask][1:] != 0).all())
    lengths = mask.sum(dim=1)
    # right padding: the mask is a prefix of ones
    assert bool((mask == (torch.arange(ids.shape[1]) < lengths[:, None])).all())


def test_measure_rotates_order_and_discards_warmup():
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    samples, _ = measure(calls, warmup=1, repeats=2, sync=lambda: None)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(v) == 2 for v in samples.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keep": 0.0}, "keep ratio"),
        ({"keep": 1.5}, "keep ratio"),
        ({"keep": [0.5, 2.0]}, "keep ratio"),
        ({"seq_len": 1}, "seq-len"),
        ({"method": "no-such-method"}, "unknown method"),
        ({"seq_len": 65}, "exceeds"),
        ({"batch_size": 0}, "batch-size"),
        ({"repeats": 0}, "repeats"),
        ({"dtype": "int8"}, "dtype"),
        ({"dtype": "fp16"}, "fp16"),
        ({"model_config": None, "model": "random:gpt-huge"}, "unknown random model"),
        ({"keep": [0.5, 0.5, 0.5]}, "keep ratios"),
    ],
)
def test_bad_options_raise_sttabt_error(overrides, message):
    with pytest.raises(SttabtError, match=message):
        run_benchmark(tiny_bench(**overrides))


def test_command_line_round_trips_through_the_parser():
    config = tiny_bench(model="random:minilm", keep=[0.9, 0.5], length_jitter=0.25, output="x.json")
    argv = shlex.split(config.command_line())
    assert argv[:2] == ["sttabt", "bench"]
    args = build_parser().parse_args(argv[1:])
    assert (args.model, args.method, args.keep, args.batch_size, args.seq_len) == (
        "random:minilm", "topk", "0.9,0.5", 3, 16,
    )  # fmt: skip
    assert (args.length_jitter, args.threads, args.warmup, args.repeats, args.output) == (
        0.25,
        1,
        1,
        4,
        "x.json",
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "topk", "--keep", "1.5"],
        ["--method", "topk", "--keep", "abc"],
        ["--method", "nope"],
        ["--method", "topk", "--keep", "0.5", "--seq-len", "1"],
    ],
)
def test_cli_errors_exit_2_with_one_line(capsys, tmp_path, extra):
    out = tmp_path / "b.json"
    code = main(["bench", "--model", "random:minilm", *extra, "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sttabt bench: error:")
    assert not out.exists()


def test_cli_runs_and_writes_json(capsys, tmp_path):
    out = tmp_path / "b.json"
    before = torch.get_num_threads()
    code = main(
        ["bench", "--model", "random:minilm", "--method", "topk", "--keep", "0.5", "--batch-size", "1",
         "--seq-len", "8", "--warmup", "0", "--repeats", "1", "--threads", "1", "--device", "cpu",
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model_shape"]["num_layers"] == 6 and result["model_shape"]["hidden_size"] == 384
    assert result["command"].startswith("sttabt bench --model random:minilm --method topk --keep 0.5")
    printed = capsys.readouterr().out
    assert "efficiency" in printed and str(out) in printed
    assert torch.get_num_threads() == before


def _load_aggregator():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "aggregate_runtime.py"
    spec = importlib.util.spec_from_file_location("aggregate_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aggregator_writes_summary_table(tmp_path):
    aggregator = _load_aggregator()
    for batch, keep in ((1, 0.5), (32, 0.25)):
        run_benchmark(
            tiny_bench(
                batch_size=batch, keep=keep, repeats=1, warmup=0, output=str(tmp_path / f"r{batch}.json")
            )
        )
    assert aggregator.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["batch_size"]: r for r in summary["rows"]}
    assert set(rows) == {1, 32}
    assert rows[1]["target"] == 0.7 and rows[32]["target"] == 0.85
    for r in rows.values():
        assert r["meets_target"] == (r["efficiency"] >= r["target"])
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["method_ms"])
        loads = [v for point in _recorded_loads(tmp_path, r["name"]) for v in point[:1]]
        assert r["load_average_max"] == (max(loads) if loads else None)
        assert r["cpu_features"] is not None
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert "features" in table[2] or not rows[1]["cpu_features"]
    body = [line for line in table if line.startswith("| tiny")]
    assert len(body) == 2 and "| 32 | 16 | 0.25 | fp32 |" in body[1]


def _recorded_loads(folder, name):
    """The load averages a result recorded, as lists (before and after)."""
    load = json.loads((folder / f"{name}.json").read_text())["load_average"]
    return [point for point in load.values() if point]


def test_bf16_bench_runs_under_no_grad_autocast():
    """bf16 timings keep autocast's weight copies for all rounds (no inference_mode, which would re-cast)."""
    result = run_benchmark(tiny_bench(dtype="bf16", repeats=2))
    assert result["dtype"] == "bf16" and "no_grad and bf16 autocast" in result["protocol"]
    assert result["timings"]["method"]["median_ms"] > 0 and math.isfinite(result["efficiency"])
    assert result["logit_check"]["runtime_dense_vs_hf_max_abs_diff"] < 0.05


def test_breakdown_splits_time_and_macs_by_kind():
    from sttabt.bench import op_kind
    from sttabt.core.flops import macs_by_kind

    assert op_kind("aten::addmm") == "linear" and op_kind("aten::bmm") == "attention"
    assert op_kind("aten::_softmax") == "attention" and op_kind("aten::gather") == "other"

    result = run_benchmark(tiny_bench(breakdown=True, repeats=1))
    parts = result["breakdown"]
    assert "--breakdown" in result["command"]
    for name in ("hf_dense", "runtime_dense", "method"):
        assert parts[name]["linear_ms"] > 0 and parts[name]["aten_ops"] > 0
    # MACs by kind add up to the encoder MACs of the FLOPs report (dense: every layer at full length).
    shape = EncoderShape(2, 16, 32, 2, head_macs=16 * 16 + 16 * 2)
    full = torch.full((1, 2, 3), 16)
    dense = macs_by_kind(shape, full)
    assert parts["hf_dense"]["linear_macs"] == pytest.approx(float(dense["linear"][0]))
    assert parts["hf_dense"]["linear_macs"] + parts["hf_dense"]["attention_macs"] == pytest.approx(
        float(encoder_cost(shape, full, torch.tensor([16])).macs[0])
    )
    counts = torch.tensor([[[16, 16, 8], [8, 1, 1]]])  # top-k 0.5, as above
    assert parts["method"]["linear_macs"] == pytest.approx(float(macs_by_kind(shape, counts)["linear"][0]))
    assert parts["linear_ideal_speedup"] == pytest.approx(
        parts["hf_dense"]["linear_macs"] / parts["method"]["linear_macs"]
    )
    ratio = parts["linear_speedup"] / parts["linear_ideal_speedup"]
    assert parts["linear_efficiency"] == pytest.approx(ratio)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_abt_with_a_random_approxnet_needs_no_artifacts(dtype):
    """``--approx random[:F]`` draws a seeded factor-F ApproxNet: ABT timed with nothing trained."""
    result = run_benchmark(tiny_bench(method="abt", approx="random:2", keep=0.3, dtype=dtype, repeats=2))
    again = run_benchmark(tiny_bench(method="abt", approx="random:2", keep=0.3, dtype=dtype, repeats=2))
    assert result["flops"]["relative"] == again["flops"]["relative"]  # same seed, same ApproxNet and sets
    assert 0 < result["flops"]["relative"] < 1 and result["retention"] < 1
    assert "--approx random:2" in result["command"]


def test_a_random_approxnet_with_fewer_heads_costs_less():
    full = run_benchmark(tiny_bench(method="abt", approx="random:2", keep=1.0, repeats=2))
    narrow = run_benchmark(tiny_bench(method="abt", approx="random:2x1", keep=1.0, repeats=2))
    assert narrow["retention"] == full["retention"] == 1.0  # same sets: only the ApproxNet differs
    assert narrow["flops"]["relative"] < full["flops"]["relative"]  # one softmax map per layer, not two
    assert "--approx random:2x1" in narrow["command"]


@pytest.mark.parametrize("approx", ["random:0", "random:x", "random:", "random:2x0", "random:2x"])
def test_random_approx_factor_must_be_a_positive_integer(approx):
    with pytest.raises(SttabtError, match="random:F"):
        tiny_bench(method="abt", approx=approx, keep=0.3).validate()


def test_skip_runtime_dense_times_two_variants():
    result = run_benchmark(tiny_bench(runtime_dense=False, breakdown=True))
    assert set(result["timings"]) == {"hf_dense", "method"} and result["variants"] == ["hf_dense", "method"]
    assert result["runtime_overhead"] is None and result["speedup"] > 0
    assert "--skip-runtime-dense" in result["command"]
    assert "runtime_dense" not in result["breakdown"]
