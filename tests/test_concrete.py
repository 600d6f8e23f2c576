"""Concrete masking (METHODS.md §1.4): the mask formulas, the selector, the masked formulation, the loss."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_bert import id_batch, tiny_approx, tiny_bert

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.approxnet import trace_encoder
from sttabt.core import concrete as core
from sttabt.core.flops import dense_counts, encoder_cost
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.concrete import (
    ConcreteConfig,
    ConcreteSelector,
    ConcreteState,
    concrete_forward,
    masked_forward,
    predict_masks,
)
from sttabt.runtime import SparseEncoder

ATOL = 1e-5


# -- the formulas on hand-computed examples -----------------------------------------------------------------
def test_uniform_scores_by_hand():
    """Row [0, 2, 4 | pad]: mean 2, variance 8/3, so u = Φ(∓√1.5), Φ(0); the pad gets 0."""
    z = torch.tensor([[[[0.0, 2.0, 4.0, -10000.0]]]])
    valid = torch.tensor([[True, True, True, False]])
    u = core.uniform_scores(z, valid)
    phi = 0.5 * math.erfc(math.sqrt(1.5) / math.sqrt(2))  # Φ(-1.2247) = 0.110335
    torch.testing.assert_close(u, torch.tensor([[[phi, 0.5, 1 - phi, 0.0]]]), atol=1e-6, rtol=0)
    two_heads = torch.cat([z, z.flip(-1).roll(-1, dims=-1)], dim=1)  # head 2: [4, 2, 0 | pad]
    torch.testing.assert_close(core.uniform_scores(two_heads, valid)[0, 0, :3], torch.full((3,), 0.5))


def test_one_layer_masks_by_hand():
    """L = 1: M_1 = onehot(CLS), so r = ū(CLS, ·); with p_logit = -1 the gate keeps c > 1 - σ(-1) = 0.73."""
    z = torch.tensor([[[[0.0, 2.0, 4.0, -10000.0]]]])
    valid = torch.tensor([[True, True, True, False]])
    out = core.concrete_masks([z], valid, torch.tensor([-1.0]))
    phi = 0.5 * math.erfc(math.sqrt(1.5) / math.sqrt(2))
    c = [0.01 + 0.99 * phi / (1 - phi), 0.01 + 0.99 * 0.5 / (1 - phi), 1.0, 0.0]  # 0.1328, 0.5664, 1
    torch.testing.assert_close(out.scores[0], torch.tensor([c]), atol=1e-6, rtol=0)
    gate = 1 / (1 + math.exp(-(-1 + math.log(c[1] / (1 - c[1]))) / 0.1))  # σ(-7.33) = 6.56e-4
    assert float(out.gates[0][0, 1]) == pytest.approx(gate, rel=1e-4)
    assert float(out.gates[0][0, 0]) < 1e-9 and float(out.gates[0][0, 2]) == pytest.approx(1.0)
    torch.testing.assert_close(out.masks[0][0], torch.tensor([1.0, gate, 1.0, 0.0]), atol=1e-6, rtol=1e-4)
    assert out.hard()[0].tolist() == [[True, False, True, False]]  # CLS through the union, not its gate
    assert out.hard()[1].tolist() == [[True, False, False, False]]
    assert float(out.retention()) == pytest.approx(1 / 3)  # ρ̄ over M_1 = onehot(CLS), 3 real tokens


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def reference_masks(logits: list[torch.Tensor], p_logits: list[float], p: float = 0.1) -> list[list[float]]:
    """§1.4 for ONE unpadded sample in plain float64 loops: ``logits[l]`` is ``(H, n, n)``; M_0..M_L."""
    eps, n = 1e-7, logits[0].shape[-1]
    upper = [1.0] + [0.0] * (n - 1)
    impact = list(upper)
    out = [upper]
    for layer in range(len(logits) - 1, -1, -1):
        heads = logits[layer].shape[0]
        ubar = [[0.0] * n for _ in range(n)]
        for h in range(heads):
            for q in range(n):
                row = logits[layer][h, q].double().tolist()
                mu = sum(row) / n
                sd = math.sqrt(sum((x - mu) ** 2 for x in row) / n)
                for j in range(n):
                    ubar[q][j] += _phi((row[j] - mu) / (sd + eps)) / heads
        weight = [upper[q] * ((1 - p) + p * impact[q]) for q in range(n)]
        r = [sum(weight[q] * ubar[q][j] for q in range(n)) / (sum(upper) + eps) for j in range(n)]
        impact = [0.01 + 0.99 * x / (max(r) + eps) for x in r]
        pi = _sigmoid(p_logits[layer])
        prior = math.log(pi + eps) - math.log(1 - pi + eps)
        gate = [_sigmoid((prior + math.log(c + eps) - math.log(1 - c + eps)) / 0.1) for c in impact]
        upper = [max(a, b) for a, b in zip(gate, upper, strict=True)]
        out.append(upper)
    return out[::-1]


def _random_logits(lengths, heads, layers, seed, width=None):
    gen = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    valid = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    bias = (~valid).float()[:, None, None, :] * -10000.0
    return [
        torch.randn(len(lengths), heads, width, width, generator=gen) * 2 + bias for _ in range(layers)
    ], valid


def test_batched_masks_equal_the_per_sample_reference():
    lengths = [7, 3, 1, 5]
    logits, valid = _random_logits(lengths, heads=3, layers=3, seed=1, width=9)
    p_logits = torch.tensor([-0.5, -1.0, 0.3])
    out = core.concrete_masks(logits, valid, p_logits, heads=3)
    for b, n in enumerate(lengths):
        expected = reference_masks([z[b, :, :n, :n] for z in logits], p_logits.tolist())
        for ours, theirs in zip(out.masks, expected, strict=True):
            torch.testing.assert_close(
                ours[b, :n].double(), torch.tensor(theirs, dtype=torch.float64), atol=1e-5, rtol=0
            )
            assert not ours[b, n:].any()  # padding is never kept
    hard = out.hard()
    for outer, inner in zip(hard[:-1], hard[1:], strict=True):
        assert not (inner & ~outer).any()  # nested (R3)
    assert all(bool(h[:, 0].all()) for h in hard) and torch.equal(
        hard[-1], torch.eye(9, dtype=torch.bool)[[0] * 4]
    )
    assert 0 < sum(int(h.sum()) for h in hard[:-1]) < 3 * sum(lengths)  # something kept, something pruned


def test_chunked_and_row_limited_sources_give_the_same_masks():
    """Chunks of samples change nothing; the top layer needs only the CLS row (M_L = onehot(CLS))."""
    logits, valid = _random_logits([6, 4, 5], heads=2, layers=2, seed=3)
    p_logits = torch.tensor([-1.0, -0.2])
    whole = core.concrete_masks(logits, valid, p_logits, heads=2)
    cls_row_only = [logits[0], logits[1][:, :, :1]]
    chunked = core.concrete_masks(cls_row_only, valid, p_logits, heads=2, chunk_elements=1)
    for a, b in zip(whole.masks, chunked.masks, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_a_larger_p_logit_keeps_more_and_the_zero_temperature_limit():
    logits, valid = _random_logits([8, 6], heads=2, layers=1, seed=5)
    kept = [
        int(core.concrete_masks(logits, valid, torch.tensor([v])).hard()[0].sum()) for v in (-3, -1, 0, 2)
    ]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    # τ → 0: keep j iff c(j) > 1 - σ(p_logit) (R8); the union adds CLS.
    sharp = core.concrete_masks(logits, valid, torch.tensor([-0.5]), temperature=1e-4)
    expected = (sharp.scores[0] > 1 - torch.sigmoid(torch.tensor(-0.5))) & valid
    expected[:, 0] = True
    assert torch.equal(sharp.hard()[0], expected)


def test_masks_are_differentiable_with_finite_gradients():
    """Gradients reach the logits and every p_logit, also for a one-token sample (a constant row)."""
    logits, valid = _random_logits([5, 1, 3], heads=2, layers=2, seed=7)
    logits = [z.requires_grad_() for z in logits]
    p_logits = torch.tensor([-1.0, -0.5], requires_grad=True)
    out = core.concrete_masks(logits, valid, p_logits, heads=2)
    (sum(m.sum() for m in out.masks) + out.retention()).backward()
    assert all(bool(torch.isfinite(z.grad).all()) for z in logits)
    assert bool(torch.isfinite(p_logits.grad).all()) and bool((p_logits.grad != 0).all())
    assert logits[0].grad[:, :, :, 1:5].abs().sum() > 0


def test_retention_and_regularizer_by_hand():
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    m1 = torch.tensor([[1.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]])
    m2 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # the CLS-only last layer counts
    rho = core.achieved_retention([m1, m2], valid)
    assert float(rho) == pytest.approx(((2 / 4 + 1 / 2) + (1 / 4 + 1 / 2)) / 4)  # 0.4375
    p_logits = torch.tensor([-1.0, 0.0])
    loss = core.concrete_regularizer(p_logits, -1.0, rho, lambda_p=0.5, lambda_r=2.0)
    target = 1 / (1 + math.exp(1.0))  # σ(-1) = 0.2689
    assert float(loss) == pytest.approx(0.5 * 1.0 + 2.0 * (target - 0.4375) ** 2)


def test_binarize_with_and_without_straight_through():
    mask = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    assert core.binarize(mask).tolist() == [0.0, 1.0, 1.0] and not core.binarize(mask).requires_grad
    through = core.binarize(mask, straight_through=True)
    through.sum().backward()
    assert through.tolist() == [0.0, 1.0, 1.0] and mask.grad.tolist() == [1.0, 1.0, 1.0]


# -- the selector on a tiny BERT with an ApproxNet -----------------------------------------------------------
P_LOGITS = torch.tensor([0.0, -0.5, -1.0])


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


@pytest.fixture(scope="module")
def approx(model):
    return tiny_approx(model)


def _selector(adapter, approx, p_logits=P_LOGITS):
    options = MethodOptions(approx="<in memory>", extra={"approxnet": approx, "p_logits": p_logits})
    return build_selector("concrete", adapter, options)


def test_selector_sets_equal_the_masks_of_the_full_traced_logits(model, approx):
    """The recorded q/k path gives the sets of the core on the ApproxNet's full pre-softmax logits."""
    adapter = HFTextClassifierAdapter(model)
    batch = id_batch([12, 6, 9], total=14, seed=4)
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        out = SparseEncoder(adapter)(batch, _selector(adapter, approx))
        expected = core.concrete_masks(trace_encoder(approx.adapter, batch).scores, valid, P_LOGITS).hard()
    for ours, theirs in zip(out.key_sets, expected, strict=True):
        assert torch.equal(ours, theirs)
    sizes = torch.stack([s.sum(1) for s in out.key_sets[:-1]])
    assert (sizes < valid.sum(1)).any() and (sizes > 1).any()  # a real pruning, not all or nothing


def test_selector_is_batch_invariant_and_counts_its_overhead(model, approx):
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    lengths = [14, 5, 9, 1]
    batch = id_batch(lengths, total=16, seed=7)
    with torch.no_grad():
        together = runner(batch, _selector(adapter, approx))
        for row, n in enumerate(lengths):
            alone = runner({k: v[row : row + 1, :n] for k, v in batch.items()}, _selector(adapter, approx))
            torch.testing.assert_close(alone.logits[0], together.logits[row], atol=ATOL, rtol=0)
            for a, b in zip(alone.key_sets, together.key_sets, strict=True):
                assert torch.equal(a[0], b[row, :n])
            assert float(alone.cost.flops[0]) == pytest.approx(float(together.cost.flops[row]))
    real = torch.tensor(lengths)
    shape = approx.adapter.shape
    sparse = encoder_cost(adapter.shape, together.counts, real)
    approx_pass = encoder_cost(shape, dense_counts(real, shape.num_layers, readout_last=True), real)
    rows = real.view(-1, 1).repeat(1, 3)
    rows[:, -1] = 1
    logit_macs = (rows * real[:, None]).sum(1).double() * shape.hidden_size
    torch.testing.assert_close(together.cost.macs, sparse.macs + approx_pass.macs + logit_macs)
    construction = core.construction_flops(shape.num_heads, real, rows)
    expected_flops = sparse.flops + approx_pass.flops + 2 * logit_macs + construction
    torch.testing.assert_close(together.cost.flops, expected_flops)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_masked_hard_formulation_equals_the_gathered_run(helpers, family):
    """Random nested sets as hard masks: the masked full-length run gives the runtime's logits (1e-5)."""
    model = helpers.make_model(helpers.TinySpec(family=family, layers=3, heads=2, head_dim=4, seed=2))
    adapter = HFTextClassifierAdapter(model)
    lengths = [9, 4, 1, 7]
    batch = helpers.make_batch(model, lengths, width=11, pair=True, seed=3)
    sets = helpers.random_nested_sets(lengths, 3, torch.Generator().manual_seed(5))
    masks = helpers.sets_to_masks(sets, 11)
    with torch.no_grad():
        gathered = SparseEncoder(adapter)(batch, helpers.PlannedSelector(masks)).logits
        masked = masked_forward(adapter, batch, [m.float() for m in masks])
    torch.testing.assert_close(masked, gathered, atol=ATOL, rtol=0)
    assert (gathered - model(**batch).logits).abs().max() > 1e-3  # the sets do change the result


def test_masked_hard_concrete_equals_the_selector_run(model, approx):
    adapter = HFTextClassifierAdapter(model)
    batch = id_batch([13, 4, 8], total=15, seed=9)
    with torch.no_grad():
        physical = SparseEncoder(adapter)(batch, _selector(adapter, approx))
        masks = predict_masks(SparseEncoder(approx.adapter), batch, P_LOGITS)
        masked = masked_forward(adapter, batch, [core.binarize(m) for m in masks.masks])
    torch.testing.assert_close(masked, physical.logits, atol=ATOL, rtol=0)


def test_masked_formulation_with_every_token_kept_is_the_dense_model(model):
    adapter = HFTextClassifierAdapter(model)
    batch = id_batch([10, 3, 7], seed=2)
    ones = [batch["attention_mask"].float()] * 4
    with torch.no_grad():
        torch.testing.assert_close(
            masked_forward(adapter, batch, ones), model(**batch).logits, atol=ATOL, rtol=0
        )


def test_training_forward_reaches_backbone_approxnet_and_p_logits(model, approx):
    import copy

    student, predictor_net = copy.deepcopy(model).train(), copy.deepcopy(approx).train()
    adapter, predictor = HFTextClassifierAdapter(student), SparseEncoder(predictor_net.adapter)
    state = ConcreteState(3, ConcreteConfig(p_init=-0.5))
    assert state.p_logits.tolist() == [-0.5] * 3
    group = state.param_group(1e-5)
    assert group["lr"] == pytest.approx(1e-4) and group["weight_decay"] == 0.0
    batch = id_batch([9, 5], seed=1)
    labels = torch.tensor([0, 1])
    run = concrete_forward(adapter, predictor, state, batch)
    loss = torch.nn.functional.cross_entropy(run.logits, labels) + state.regularizer(run.masks)
    loss.backward()
    assert bool((state.p_logits.grad != 0).all())
    assert predictor_net.model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].attention.self.value.weight.grad.abs().sum() > 0
    # Hard phase: the task loss sends nothing to the p_logits, unless straight through.
    for straight in (False, True):
        state.p_logits.grad = None
        run = concrete_forward(adapter, predictor, state, batch, hard=True, straight_through=straight)
        torch.nn.functional.cross_entropy(run.logits, labels).backward()
        moved = state.p_logits.grad is not None and bool(state.p_logits.grad.abs().sum() > 0)
        assert moved == straight


def test_bad_method_state_and_config_are_refused(model, approx):
    adapter = HFTextClassifierAdapter(model)
    with pytest.raises(SttabtError, match="needs trained p_logits"):
        build_selector("concrete", adapter, MethodOptions(extra={"approxnet": approx}))
    with pytest.raises(SttabtError, match="3 layers"):
        _selector(adapter, approx, torch.zeros(2))
    with pytest.raises(SttabtError, match="exactly 'p_logits'"):
        build_selector(
            "concrete", adapter, MethodOptions(extra={"approxnet": approx, "method_state": {"x": P_LOGITS}})
        )
    with pytest.raises(SttabtError, match="finite"):
        _selector(adapter, approx, torch.tensor([0.0, math.nan, 1.0]))
    with pytest.raises(SttabtError, match="needs its ApproxNet"):
        build_selector("concrete", adapter, MethodOptions(extra={"p_logits": P_LOGITS}))
    for bad in (dict(p_init=11.0), dict(p_init=math.nan), dict(lambda_r=-1.0), dict(temperature=0.0)):
        with pytest.raises(SttabtError, match="concrete"):
            ConcreteConfig(**bad).validate()
    selector = build_selector("concrete", adapter, MethodOptions(extra={"approxnet": approx, "p_init": -1.0}))
    assert isinstance(selector, ConcreteSelector) and selector.p_logits.tolist() == [-1.0] * 3


TEXTS = [
    "a gorgeous, witty, seductive movie that never loses its nerve or its sense of humour.",
    "it's slow -- very, very slow.",
    "the acting is fine, but the plot wanders off somewhere around the second act and never returns.",
    "dull.",
]


def test_masked_hard_concrete_equals_the_gathered_run_on_minilm(minilm):
    """The pretrained MiniLM (real, peaky attention), padded sentences: masked ≡ physically removed."""
    from sttabt.approxnet import ApproxNet

    model, tokenizer = minilm
    adapter = HFTextClassifierAdapter(model)
    torch.manual_seed(0)
    approx = ApproxNet.from_teacher(model, 4, init="interpolate", fingerprint="test")
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    p_logits = torch.tensor([0.5, 0.0, -0.5, -1.0, -1.0, -1.5])
    with torch.no_grad():
        physical = SparseEncoder(adapter)(batch, _selector(adapter, approx, p_logits))
        masks = predict_masks(SparseEncoder(approx.adapter), batch, p_logits)
        masked = masked_forward(adapter, batch, [core.binarize(m) for m in masks.masks])
    torch.testing.assert_close(masked, physical.logits, atol=ATOL, rtol=0)
    assert 0.2 < float(physical.retention().mean()) < 0.95


def test_selector_and_masked_forward_compose_with_bf16_autocast(model, approx):
    """Under bf16 autocast the logits are computed in float32 from bf16 q/k: the sets barely move."""
    from sttabt.utils import inference

    adapter = HFTextClassifierAdapter(model)
    batch = id_batch([13, 4, 8], total=15, seed=9)
    with torch.no_grad():
        fp32 = SparseEncoder(adapter)(batch, _selector(adapter, approx))
    with inference(torch.device("cpu"), "bf16"):
        out = SparseEncoder(adapter)(batch, _selector(adapter, approx))
        masks = predict_masks(SparseEncoder(approx.adapter), batch, P_LOGITS)
        masked = masked_forward(adapter, batch, [core.binarize(m) for m in masks.masks])
    assert all(m.dtype == torch.float32 for m in masks.masks)
    kept = sum(int(s.sum()) for s in fp32.key_sets[:-1])
    shared = sum(int((a & b).sum()) for a, b in zip(fp32.key_sets[:-1], out.key_sets[:-1], strict=True))
    assert shared >= 0.9 * kept
    assert torch.isfinite(masked.float()).all() and (masked.float() - out.logits.float()).abs().max() < 0.1


def test_hard_phase_is_the_last_fraction_of_the_steps():
    from sttabt.methods.concrete import uses_hard_masks

    assert [uses_hard_masks(step, 10, 0.2) for step in range(10)] == [False] * 8 + [True] * 2
    assert not any(uses_hard_masks(step, 7, 0.0) for step in range(7))
    assert all(uses_hard_masks(step, 7, 1.0) for step in range(7))
    assert sum(uses_hard_masks(step, 101, 0.2) for step in range(101)) == 20


def test_the_retention_term_steers_the_p_logits_towards_the_target():
    """Optimising the regulariser alone (λ_p = 0) moves ρ̄ to σ(p_init) from a start far above it."""
    logits, valid = _random_logits([12, 9, 7, 11], heads=2, layers=3, seed=11)
    state = ConcreteState(3, ConcreteConfig(p_init=-1.5, lambda_p=0.0, lambda_r=1.0))
    with torch.no_grad():
        state.p_logits.fill_(1.0)  # keeps most tokens: ρ̄ well above σ(-1.5) = 0.18
    optimizer = torch.optim.Adam([state.p_logits], lr=0.1)
    gaps = []
    for _ in range(100):
        masks = core.concrete_masks(logits, valid, state.p_logits, heads=2)
        gaps.append(abs(float(masks.retention().detach()) - 1 / (1 + math.exp(1.5))))
        optimizer.zero_grad()
        state.regularizer(masks).backward()
        optimizer.step()
    assert gaps[0] > 0.3 and gaps[-1] < 0.1 * gaps[0]
    # ρ̄ reads the output masks M_1..M_L: p_logit_0 only gates layer 0's keys, so this term leaves it.
    assert float(state.p_logits.detach()[0]) == 1.0 and bool((state.p_logits[1:] < 0).all())


@pytest.mark.parametrize("method", ["concrete", "ltp"])
def test_saved_state_tensors_must_fit_the_model(method):
    """A learned state that does not fit (other keys, other layer count, not finite) is one line."""
    from sttabt.methods.concrete import checked_p_logits
    from sttabt.methods.ltp import checked_thresholds

    concrete = method == "concrete"
    check, key = (checked_p_logits, "p_logits") if concrete else (checked_thresholds, "thresholds")
    good = torch.tensor([0.1, -0.5, 0.3])
    assert torch.equal(check({key: good}, 3), good)
    for tensors, message in (
        ({key: good}, "shape \\(3,\\), but the model has 4 layers"),
        ({"other": good}, "holds exactly"),
        ({key: torch.tensor([0.1, float("nan"), 0.3, 0.2])}, "finite"),
    ):
        with pytest.raises(SttabtError, match=message):
            check(tensors, 4)
