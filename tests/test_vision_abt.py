"""The ApproxNet and ABT on Hugging Face ViT/DeiT: construction, tracing, persistence, batch invariance."""

from __future__ import annotations

import pytest
import torch
from vision_models import images, make

from sttabt.approxnet import ApproxNet, trace_encoder
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.runtime import SparseEncoder

HF_CASES = ["hf-vit", "hf-deit", "hf-deit-teacher"]


@pytest.mark.parametrize("case", HF_CASES)
def test_trace_matches_the_hugging_face_attentions(case):
    model = make(case)
    pixels = images(3)
    trace = trace_encoder(model, {"pixel_values": pixels})
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)
    assert len(trace.attentions) == len(out.attentions)
    for ours, theirs in zip(trace.attentions, out.attentions, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(trace.logits, out.logits, atol=1e-5)
    assert trace.valid.all() and trace.valid.shape == pixels.shape[:1] + trace.attentions[0].shape[-1:]


@pytest.mark.parametrize("init", ["random", "interpolate"])
def test_vit_approxnet_shape_round_trip_and_teacher_check(tmp_path, init):
    teacher = make("hf-deit")
    approx = ApproxNet.from_teacher(teacher, 4, init=init)
    assert approx.model.config.hidden_size == teacher.config.hidden_size // 4
    assert approx.model.config.num_attention_heads == teacher.config.num_attention_heads
    assert type(approx.model) is type(teacher) and approx.adapter.prefix_tokens == 2
    assert approx.approx_config.image_geometry == {"image_size": [32, 32], "patch_size": [8, 8],
                                                   "num_channels": 3}  # fmt: skip
    approx.save(tmp_path / "a")
    loaded = ApproxNet.load(tmp_path / "a", teacher=teacher)
    pixels = images(2)
    assert torch.allclose(loaded(pixels_batch(pixels)).logits, approx(pixels_batch(pixels)).logits)
    with pytest.raises(SttabtError, match="not from this teacher"):
        ApproxNet.load(tmp_path / "a", teacher=make("hf-deit", seed=5))
    with pytest.raises(SttabtError, match="differ"):
        ApproxNet.load(tmp_path / "a", teacher=make("hf-vit"))


def pixels_batch(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"pixel_values": pixels}


def test_timm_teachers_are_refused_for_an_approxnet():
    pytest.importorskip("timm")
    with pytest.raises(SttabtError, match="needs a Hugging Face teacher"):
        ApproxNet.from_teacher(make("timm-vit"), 2)


@pytest.mark.parametrize("case", HF_CASES)
def test_abt_on_images_is_batch_invariant_and_keeps_the_prefix(case):
    teacher = make(case)
    torch.manual_seed(0)
    approx = ApproxNet.from_teacher(teacher, 2)
    options = MethodOptions(keep=0.4, approx="<in memory>", extra={"approxnet": approx})
    encoder = SparseEncoder(teacher)
    selector = build_selector("abt", teacher, options)
    pixels = images(5)
    with torch.no_grad():
        together = encoder(pixels_batch(pixels), selector)
        alone = [encoder(pixels_batch(pixels[i : i + 1]), selector) for i in range(5)]
    prefix = encoder.adapter.prefix_tokens
    for i, single in enumerate(alone):
        assert torch.allclose(together.logits[i], single.logits[0], atol=1e-5)
        for layer, sets in enumerate(together.key_sets[:-1]):
            assert torch.equal(sets[i], single.key_sets[layer][0])
            assert sets[i, :prefix].all()
    patches = together.key_sets[0].shape[1] - prefix
    assert together.key_sets[-2][:, prefix:].sum(dim=1).max() <= patches  # pruning happened below
    assert together.retention().max() < 1.0


def test_abt_keep_all_on_a_vit_equals_the_dense_model():
    teacher = make("hf-vit")
    torch.manual_seed(0)
    approx = ApproxNet.from_teacher(teacher, 2)
    options = MethodOptions(keep=1.0, approx="<in memory>", extra={"approxnet": approx})
    pixels = images(3)
    with torch.no_grad():
        out = SparseEncoder(teacher)(pixels_batch(pixels), build_selector("abt", teacher, options))
        dense = teacher(pixel_values=pixels).logits
    assert torch.allclose(out.logits, dense, atol=1e-5)


@pytest.mark.parametrize(("method", "approx"), [("topk", None), ("abt", "random:2")])
def test_bench_times_image_models(method, approx):
    from transformers import ViTConfig

    from sttabt.bench import BenchConfig, run_benchmark

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=5)  # fmt: skip
    bench = BenchConfig(model="tiny-vit", model_config=config, method=method, keep=0.5, approx=approx,
                        batch_size=3, warmup=0, repeats=1, device="cpu")  # fmt: skip
    result = run_benchmark(bench)
    assert result["inputs"]["image_size"] == [32, 32] and result["inputs"]["real_length_max"] == 17
    assert result["seq_len"] is None and result["flops"]["relative"] < 1.0
    assert result["logit_check"]["runtime_dense_vs_hf_max_abs_diff"] < 1e-4
    assert result["dense_reference"] == "HF dense"


def test_bench_times_timm_models_against_their_own_forward():
    from sttabt.bench import BenchConfig, format_summary, run_benchmark

    bench = BenchConfig(model="timm:vit_tiny_patch16_224", method="topk", keep=0.5, batch_size=1, warmup=0,
                        repeats=1, device="cpu")  # fmt: skip
    result = run_benchmark(bench)
    assert result["dense_reference"] == "timm dense" and "timm dense" in format_summary(result)
    assert result["inputs"]["real_length_max"] == 197 and result["flops"]["relative"] < 1.0
