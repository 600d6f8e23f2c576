"""The analytic MAC count of image backbones against torch's own FlopCounterMode, and the DeiT-S anchor.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of matmuls, linears and convolutions (and nothing
element-wise), so MACs = its total / 2. On CPU it has no formula for the fused flash-attention kernel
that ``scaled_dot_product_attention`` picks, so the counted runs use the math backend (HF models: eager
attention); with it the analytic count is exact.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from vision_models import CASES, PATCHES, images, make, random_prefix_sets, reference_logits

from sttabt.adapters.lookup import adapter_for
from sttabt.core.flops import dense_cost
from sttabt.runtime import SparseEncoder


def counted_macs(run) -> float:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("case", CASES)
def test_dense_model_macs_equal_the_analytic_count(case):
    model = make(case, layers=2)
    adapter = adapter_for(model)
    tokens = torch.tensor([PATCHES + adapter.prefix_tokens])
    measured = counted_macs(lambda: reference_logits(model, images(1)))
    assert measured == pytest.approx(float(dense_cost(adapter.shape, tokens).macs[0]), rel=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_sparse_run_macs_equal_its_reported_cost(helpers, case):
    """A planned run removes tokens between layers and computes queries for a subset: the runtime's own
    cost report (from its per-layer counts) is what torch counts it doing, for one image (no padding)."""
    model = make(case, layers=3, seed=5)
    adapter = adapter_for(model)
    tokens = PATCHES + adapter.prefix_tokens
    generator = torch.Generator().manual_seed(5)
    sets = random_prefix_sets(1, tokens, 3, adapter.prefix_tokens, adapter.readout_tokens, generator, 0.6)
    runtime, pixels = SparseEncoder(adapter), images(1, seed=5)
    out = runtime({"pixel_values": pixels}, helpers.PlannedSelector(sets))
    assert out.counts[0, :, 0].lt(tokens).any()  # tokens were removed
    measured = counted_macs(lambda: runtime({"pixel_values": pixels}, helpers.PlannedSelector(sets)))
    assert measured == pytest.approx(float(out.cost.macs[0]), rel=1e-9)


def test_deit_small_dense_is_about_4_6_gmacs():
    """DeiT-S at 224² (197 tokens): 4.60 GMACs analytic and counted (fvcore-style tables: 4.6; STTABT
    reports 4.58, METHODS.md §5.1). Built by timm without weights."""
    import timm

    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    adapter = adapter_for(model)
    analytic = float(dense_cost(adapter.shape, torch.tensor([197])).macs[0])
    assert analytic / 1e9 == pytest.approx(4.6, abs=0.02)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert counted_macs(lambda: model(pixels)) == pytest.approx(analytic, rel=1e-9)
