"""ApproxNet distillation: losses, GLUE-like augmentation, training steps and the `sttabt distill` command."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from sttabt.approxnet import ApproxNet, trace_encoder
from sttabt.cli import main
from sttabt.errors import SttabtError
from sttabt.train.augment import AugmentConfig, GlueLikeAugmenter, SpecialTokens, read_corpus
from sttabt.train.distill import (
    GENERAL_WEIGHTS,
    TASK_WEIGHTS,
    StageConfig,
    attention_kl,
    attention_quality,
    build_optimizer,
    distill_loss,
    length_grouped_batches,
    masked_mse,
    prediction_mse,
    run_stage,
    teacher_targets,
)
from sttabt.train.loop import make_accelerator

torch.set_num_threads(1)

WORDS = [
    "the", "a", "movie", "film", "good", "bad", "great", "boring", "fun", "plot", "actors", "story", "is",
    "was", "not", "very", "and", "of", "it", "this", "that", "acting", "music", "scenes", "director",
    "funny", "sad", "long", "short", "best", "worst",
]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)})


def tiny_teacher(seed: int = 0, num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        initializer_range=0.3,  # peaked attention maps, unlike the near-uniform ones of the default 0.02
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def fixed_batch(tokenizer: BertTokenizer, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    enc = tokenizer(sentences(n, seed), padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


# -- losses --------------------------------------------------------------------------------------------------
def test_attention_kl_is_zero_against_itself_and_ignores_padding():
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    batch = fixed_batch(tok)
    valid = batch["attention_mask"].bool()
    assert not bool(valid.all())  # the batch has padding
    with torch.no_grad():
        t = trace_encoder(teacher, batch)
        s = trace_encoder(tiny_teacher(seed=3), batch)
    assert float(attention_kl(t.attentions, t.scores, valid)) == pytest.approx(0.0, abs=1e-5)
    kl = float(attention_kl(t.attentions, s.scores, valid))
    assert kl > 0.01
    # a padded query row of the student changes nothing
    scores = [x.clone() for x in s.scores]
    pad_b, pad_t = (~valid).nonzero()[0].tolist()
    scores[0][pad_b, :, pad_t] = torch.randn_like(scores[0][pad_b, :, pad_t]) * 10
    assert float(attention_kl(t.attentions, scores, valid)) == pytest.approx(kl, rel=1e-6)


def test_masked_mse_and_prediction_loss():
    valid = torch.tensor([[True, True, False]])
    a = torch.zeros(1, 3, 4)
    b = torch.zeros(1, 3, 4)
    b[0, 2] = 100.0  # padding only
    assert float(masked_mse(a, b, valid)) == 0.0
    b[0, 0] = 2.0
    assert float(masked_mse(a, b, valid)) == pytest.approx(2.0)  # 4 * 4 / (2 tokens * 4 dims)
    z = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    assert float(prediction_mse(z, z)) == 0.0
    assert float(prediction_mse(z, -z)) > 0.0
    assert float(prediction_mse(z + 7.0, z)) == pytest.approx(0.0, abs=1e-7)  # softmax is shift-invariant


def test_distill_loss_terms_and_weights():
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    batch = fixed_batch(tok)
    approx = ApproxNet.from_teacher(teacher, 2)
    assert not approx.training
    target = teacher_targets(teacher, batch)
    task = distill_loss(approx, batch, target, TASK_WEIGHTS)
    general = distill_loss(approx, batch, target, GENERAL_WEIGHTS)
    for loss in (task, general):
        assert min(loss.item_dict().values()) >= 0.0
        assert float(loss.att.detach()) > 0 and float(loss.hid.detach()) > 0 and float(loss.emb.detach()) > 0
    assert float(task.pred.detach()) > 0 and float(general.pred) == 0.0
    parts = general.att + general.hid + general.emb
    assert float(general.total.detach()) == pytest.approx(float(parts.detach()), rel=1e-6)
    assert float(task.total.detach()) == pytest.approx(float((parts + task.pred).detach()), rel=1e-5)
    task.total.backward()
    assert approx.hidden_projections[0].weight.grad is not None
    assert approx.embedding_projection.weight.grad is not None
    assert approx.hidden_projections[1].weight.grad.abs().sum() > 0  # P_{L-1} on hidden_states[L-1]


@pytest.mark.parametrize("heads", [None, 2], ids=["teacher-heads", "two-heads"])
def test_a_few_steps_reduce_the_attention_kl_to_the_pooled_targets(heads):
    """With fewer heads, each student head is distilled against the mean of its group of teacher heads."""
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    batch = fixed_batch(tok, n=16)
    valid = batch["attention_mask"].bool()
    torch.manual_seed(0)
    approx = ApproxNet.from_teacher(teacher, 2, heads=heads)
    target = teacher_targets(teacher, batch)
    pooled = [approx.pool_teacher_heads(t) for t in target.attentions]
    assert pooled[0].shape[1] == (heads or target.attentions[0].shape[1])

    def kl() -> float:
        approx.eval()
        with torch.no_grad():
            return float(attention_kl(pooled, approx(batch).scores, valid))

    before = kl()
    optimizer = build_optimizer(approx, lr=3e-3, weight_decay=1e-4)
    approx.train()
    for _ in range(25):
        loss = distill_loss(approx, batch, target, TASK_WEIGHTS)
        optimizer.zero_grad()
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(approx.parameters(), 0.5)
        optimizer.step()
        approx.train()
    after = kl()
    with torch.no_grad():
        final = distill_loss(approx, batch, target, TASK_WEIGHTS)  # eval mode: no dropout
    assert float(final.att) == pytest.approx(after, rel=1e-6)  # the loss is the KL to the pooled targets
    assert after < 0.7 * before, (before, after)


def test_head_mean_kl_compares_approxnets_of_any_head_count():
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    batches = [fixed_batch(tok, n=4, seed=s) for s in range(2)]
    copy = attention_quality(ApproxNet.from_teacher(teacher, 1, init="interpolate"), teacher, batches)
    assert copy["head_mean_kl"] == pytest.approx(0.0, abs=1e-5)
    narrow = attention_quality(ApproxNet.from_teacher(teacher, 2, heads=1), teacher, batches)
    # one head against the four-head mean: its per-head KL is the head-mean KL
    assert narrow["kl"] == pytest.approx(narrow["head_mean_kl"], rel=1e-4) and narrow["kl"] > 0.01


def test_run_stage_keeps_the_best_heldout_state():
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    train = [fixed_batch(tok, n=8, seed=s) for s in range(4)]
    heldout = [fixed_batch(tok, n=8, seed=100)]
    accelerator = make_accelerator("cpu")

    def heldout_kl(model: ApproxNet) -> float:
        return attention_quality(model, teacher, heldout)["kl"]

    torch.manual_seed(0)
    good = ApproxNet.from_teacher(teacher, 2)
    stage = StageConfig("task", 2, TASK_WEIGHTS, lr=3e-3, progress=False)
    result = run_stage(good, teacher, lambda epoch: iter(train), 4, heldout, stage, accelerator)
    assert result.steps == 8 and result.examples == 64 and len(result.evaluations) == 3
    assert result.best["heldout_kl"] == min(e["heldout_kl"] for e in result.evaluations)
    assert heldout_kl(good) == pytest.approx(result.best["heldout_kl"], rel=1e-6)  # the kept weights
    assert result.best["step"] > 0
    # a stage that only makes things worse keeps its starting point
    torch.manual_seed(0)
    bad = ApproxNet.from_teacher(teacher, 2)
    start = {k: v.clone() for k, v in bad.state_dict().items()}
    wild = StageConfig("task", 1, TASK_WEIGHTS, lr=50.0, grad_clip=0, progress=False)
    result = run_stage(bad, teacher, lambda epoch: iter(train), 4, heldout, wild, accelerator)
    assert result.evaluations[-1]["heldout_kl"] > result.evaluations[0]["heldout_kl"]
    assert result.best["step"] == 0
    for name, value in bad.state_dict().items():
        assert torch.equal(value, start[name]), name


def test_optimizer_excludes_bias_and_layernorm_from_decay():
    approx = ApproxNet.from_teacher(tiny_teacher(), 2)
    decay, no_decay = build_optimizer(approx, 1e-4, 1e-4).param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, param in approx.named_parameters():
        assert (id(param) in no_decay_ids) == (name.endswith("bias") or "LayerNorm" in name), name


def test_attention_quality_zero_for_a_copy_and_positive_otherwise():
    tok = tiny_tokenizer()
    teacher = tiny_teacher()
    batches = [fixed_batch(tok, n=4, seed=s) for s in range(3)]
    copy = ApproxNet.from_teacher(teacher, 1, init="interpolate")  # at factor 1: a copy of the teacher
    same = attention_quality(copy, teacher, batches)
    assert same["examples"] == 12
    assert same["kl"] == pytest.approx(0.0, abs=1e-5) and same["mse"] == pytest.approx(0.0, abs=1e-10)
    other = attention_quality(ApproxNet.from_teacher(teacher, 2), teacher, batches)
    assert other["kl"] > 0.01 and other["mse"] > 0.0
    assert not copy.training
    copy.train()
    attention_quality(copy, teacher, batches[:1])
    assert copy.training and not teacher.training  # modes restored


# -- augmentation --------------------------------------------------------------------------------------------
LINES = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat all day",
    "a second line with enough words to be used as the partner of another line in pairs",
    "short line here",
    "one more fairly long line of plain text that would come from a corpus such as wikitext",
]
BERT_SPECIALS = SpecialTokens(mask="[MASK]", sep="[SEP]", cls="[CLS]")


def test_augmentation_is_deterministic_per_seed_and_epoch():
    aug = GlueLikeAugmenter(LINES, BERT_SPECIALS, seed=3)
    again = GlueLikeAugmenter(LINES, BERT_SPECIALS, seed=3)
    first = [aug(i) for i in range(len(LINES))]
    assert first == [again(i) for i in reversed(range(len(LINES)))][::-1]  # order-independent
    other_seed = GlueLikeAugmenter(LINES, BERT_SPECIALS, seed=4)
    many = [(aug(i % 4, epoch=e), other_seed(i % 4, epoch=e)) for e in range(5) for i in range(4)]
    assert any(a != b for a, b in many)
    assert any(aug(0, epoch=0) != aug(0, epoch=e) for e in range(1, 6))


def test_augmentation_invariants():
    specials = set(BERT_SPECIALS.__dict__.values())
    vocab = {w for line in LINES for w in line.split()}
    aug = GlueLikeAugmenter(LINES, BERT_SPECIALS, seed=0)
    for epoch in range(30):
        for i, line in enumerate(LINES):
            words = aug(i, epoch).split()
            assert set(words) <= vocab | specials
            core = [w for w in words if w not in (BERT_SPECIALS.sep, BERT_SPECIALS.cls)]
            n = len(line.split())
            assert min(n, 10) <= len(core) <= n  # truncation keeps >= 10 words; short lines stay whole
            assert words.count(BERT_SPECIALS.cls) <= 1 and words.count(BERT_SPECIALS.sep) <= 2
            if BERT_SPECIALS.cls in words:
                assert words[0] == BERT_SPECIALS.cls


def test_augmentation_steps_in_isolation():
    off = AugmentConfig(word_prob=0, truncate_prob=0, sep_prob=0, trailing_sep_prob=0, leading_cls_prob=0)
    assert [GlueLikeAugmenter(LINES, BERT_SPECIALS, off)(i) for i in range(4)] == LINES
    all_masked = AugmentConfig(word_prob=1, mask_fraction=1, truncate_prob=0, sep_prob=0, trailing_sep_prob=0,
                               leading_cls_prob=0)  # fmt: skip
    assert GlueLikeAugmenter(LINES, BERT_SPECIALS, all_masked)(2) == "[MASK] [MASK] [MASK]"
    swapped = AugmentConfig(word_prob=1, mask_fraction=0, truncate_prob=0, sep_prob=0, trailing_sep_prob=0,
                            leading_cls_prob=0)  # fmt: skip
    assert set(GlueLikeAugmenter(LINES, BERT_SPECIALS, swapped)(2).split()) <= {"short", "line", "here"}
    frame = AugmentConfig(word_prob=0, truncate_prob=0, sep_prob=0)
    framed = AugmentConfig(word_prob=0, truncate_prob=0, sep_prob=0, trailing_sep_prob=1, leading_cls_prob=1)
    assert GlueLikeAugmenter(LINES, BERT_SPECIALS, framed)(2) == "[CLS] short line here [SEP]"
    assert frame.trailing_sep_prob == 0.75 and frame.leading_cls_prob == 0.75  # reference defaults
    overwrite = AugmentConfig(word_prob=0, truncate_prob=0, sep_prob=1, overwrite_prob=1, trailing_sep_prob=0,
                              leading_cls_prob=0)  # fmt: skip
    aug = GlueLikeAugmenter(LINES, BERT_SPECIALS, overwrite, seed=1)
    for epoch in range(10):
        words = aug(0, epoch).split()
        assert len(words) == len(LINES[0].split()) + 1  # one [SEP] inserted, length otherwise unchanged
        cut = words.index("[SEP]")
        assert words[:cut] == LINES[0].split()[:cut]
        partners = [line.split() for line in LINES]
        tail = words[cut + 1 :]
        assert any(tail[: len(p)] == p[: len(tail)] for p in partners)  # opening words of a second line


def test_truncation_keeps_at_least_ten_words():
    cut = AugmentConfig(word_prob=0, truncate_prob=1, sep_prob=0, trailing_sep_prob=0, leading_cls_prob=0)
    aug = GlueLikeAugmenter(LINES, BERT_SPECIALS, cut)
    lengths = {len(aug(0, epoch).split()) for epoch in range(40)}
    assert min(lengths) >= 10 and max(lengths) <= len(LINES[0].split()) and len(lengths) > 3
    assert aug(2) == LINES[2]  # <= 10 words: untouched


def test_special_tokens_come_from_the_tokenizer():
    tok = tiny_tokenizer()
    specials = SpecialTokens.from_tokenizer(tok)
    text = GlueLikeAugmenter(["the movie was good and the plot was fun"], specials,
                             AugmentConfig(word_prob=1, mask_fraction=1, leading_cls_prob=1))(0)  # fmt: skip
    ids = tok(text)["input_ids"]
    assert tok.mask_token_id in ids and ids.count(tok.cls_token_id) == 2  # ours plus the tokenizer's own
    roberta_like = SimpleNamespace(mask_token="<mask>", sep_token="</s>", cls_token="<s>")
    assert SpecialTokens.from_tokenizer(roberta_like) == SpecialTokens("<mask>", "</s>", "<s>")
    with pytest.raises(SttabtError, match="no mask token"):
        SpecialTokens.from_tokenizer(SimpleNamespace(mask_token=None, sep_token="</s>", cls_token="<s>"))


def test_read_corpus_keeps_long_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" = Heading = \n\n" + "x" * 49 + "\n" + "y" * 50 + "\n  " + "z" * 60 + "  \n")
    assert read_corpus(str(path)) == ["y" * 50, "z" * 60]
    assert read_corpus(str(path), limit=1) == ["y" * 50]
    with pytest.raises(SttabtError):
        read_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "short.txt").write_text("too short\n")
    with pytest.raises(SttabtError, match="no line"):
        read_corpus(str(tmp_path / "short.txt"))


def test_length_grouped_batches_cover_everything_once_deterministically():
    feats = [{"input_ids": [2] + [5] * n + [3], "attention_mask": [1] * (n + 2), "label": 0}
             for n in range(37)]  # fmt: skip
    order = [b["input_ids"].shape for b in length_grouped_batches(feats, 4, 0, seed=1, group=3)]
    again = [b["input_ids"].shape for b in length_grouped_batches(feats, 4, 0, seed=1, group=3)]
    assert order == again
    masks = [m for b in length_grouped_batches(feats, 4, 0, seed=1) for m in b["attention_mask"]]
    seen = sorted(int(m.sum()) for m in masks)
    assert seen == [n + 2 for n in range(37)]


# -- the command ---------------------------------------------------------------------------------------------
@pytest.fixture()
def workspace(tmp_path):
    """A tiny saved teacher (with tokenizer) and a GLUE-style SST-2 folder."""
    teacher = tiny_teacher()
    tok = tiny_tokenizer()
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for split, n, seed in (("train", 60, 0), ("dev", 12, 1)):
        rows = [f"{s}\t{i % 2}" for i, s in enumerate(sentences(n, seed))]
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return tmp_path


def _distill(workspace, output: str, *extra: str) -> int:
    return main([
        "distill", "--teacher", str(workspace / "teacher"), "--task", "sst2",
        "--data-dir", str(workspace / "glue"), "--output", str(workspace / output), "--factor", "2",
        "--batch-size", "8", "--max-length", "32", "--no-progress", "--lr", "1e-3", *extra,
    ])  # fmt: skip


def test_distill_command_end_to_end_and_deterministic(workspace):
    assert _distill(workspace, "a", "--general-epochs", "1", "--epochs", "2") == 0
    assert _distill(workspace, "b", "--general-epochs", "1", "--epochs", "2") == 0
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    a = ApproxNet.load(workspace / "a", teacher=teacher)
    b = ApproxNet.load(workspace / "b", teacher=teacher)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)  # same seed on CPU: identical weights
    assert a.approx_config.stage == "task"
    assert [h["stage"] for h in a.approx_config.history] == ["general", "task"]
    record = json.loads((workspace / "a" / "distill_log.json").read_text())
    quality = record["quality"]
    assert quality["split"] == "dev" and quality["examples"] == 12
    assert set(quality) >= {"untrained", "general", "distilled"}
    assert quality["distilled"]["kl"] < quality["untrained"]["kl"]
    task = record["stages"]["task"]
    assert task["best"]["heldout_kl"] == min(e["heldout_kl"] for e in task["evaluations"])
    # the task stage starts where the general stage ended: its start is that state's known score
    assert task["evaluations"][0]["heldout_kl"] == record["stages"]["general"]["best"]["heldout_kl"]
    assert [e["step"] for e in task["evaluations"]] == [0, 7, 14]
    assert record["examples"] == {"train": 54, "heldout": 6, "dev": 12}
    general = ApproxNet.load(workspace / "a" / "general", teacher=teacher)
    assert general.approx_config.stage == "general"
    # --init starts from the general-stage net and skips stage 1
    assert _distill(workspace, "c", "--init", str(workspace / "a" / "general"), "--epochs", "1") == 0
    record_c = json.loads((workspace / "c" / "distill_log.json").read_text())
    assert "general" not in record_c["stages"] and "init" in record_c["quality"]
    assert record_c["quality"]["init"]["kl"] == pytest.approx(quality["general"]["kl"], rel=1e-6)


def test_distill_command_with_fewer_heads(workspace, capsys):
    assert _distill(workspace, "h", "--general-epochs", "0", "--epochs", "1", "--heads", "2") == 0
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    approx = ApproxNet.load(workspace / "h", teacher=teacher)
    assert approx.approx_config.heads == 2 and approx.model.config.num_attention_heads == 2
    record = json.loads((workspace / "h" / "distill_log.json").read_text())
    assert record["config"]["heads"] == 2 and record["approxnet"]["shape"]["num_heads"] == 2
    assert record["quality"]["distilled"]["head_mean_kl"] > 0
    assert _distill(workspace, "x", "--heads", "3") == 2
    assert "positive divisor of the teacher's 4 heads" in capsys.readouterr().err
    assert _distill(workspace, "x", "--init", str(workspace / "h"), "--heads", "4") == 2
    assert "has 2 heads, not --heads 4" in capsys.readouterr().err
    assert not (workspace / "x").exists()


def test_distill_command_user_errors(workspace, capsys):
    assert _distill(workspace, "x", "--teacher", str(workspace / "nope")) == 2
    assert "sttabt distill: error:" in capsys.readouterr().err
    assert _distill(workspace, "x", "--general-epochs", "0", "--epochs", "0") == 2
    assert "nothing to do" in capsys.readouterr().err
    assert _distill(workspace, "x", "--factor", "3") == 2
    assert "does not divide" in capsys.readouterr().err
    assert _distill(workspace, "x", "--general-corpus", str(workspace / "missing.txt")) == 2
    assert "general corpus file not found" in capsys.readouterr().err
    assert not (workspace / "x").exists()


def test_general_teacher_is_recorded_per_stage(workspace):
    base = tiny_teacher(seed=7)  # e.g. the pre-trained model before task fine-tuning
    base.save_pretrained(workspace / "base")
    tiny_tokenizer().save_pretrained(workspace / "base")
    assert _distill(workspace, "g", "--general-teacher", str(workspace / "base"), "--epochs", "1") == 0
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    final = ApproxNet.load(workspace / "g", teacher=teacher)
    teachers = [h["teacher"] for h in final.approx_config.history]
    assert teachers == [str(workspace / "base"), str(workspace / "teacher")]
    ApproxNet.load(workspace / "g" / "general", teacher=base)
    with pytest.raises(SttabtError, match="not from this teacher"):
        ApproxNet.load(workspace / "g" / "general", teacher=teacher)


@pytest.mark.slow
def test_distilling_minilm_on_sst2_improves_dev_attention(minilm, tmp_path):
    """A short real run: general + task stages on 300 SST-2 train sentences (about a minute on one core)."""
    from sttabt.data import default_glue_dir

    if not (default_glue_dir() / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"GLUE SST-2 not found under {default_glue_dir()}")
    model, tokenizer = minilm
    model.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    code = main(["distill", "--teacher", str(tmp_path / "teacher"), "--task", "sst2", "--output",
                 str(tmp_path / "approx"), "--max-train-examples", "300", "--quality-examples", "64",
                 "--lr", "1e-3", "--epochs", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    quality = json.loads((tmp_path / "approx" / "distill_log.json").read_text())["quality"]
    assert quality["distilled"]["kl"] < 0.9 * quality["untrained"]["kl"]
    assert quality["distilled"]["mse"] < quality["untrained"]["mse"]
    ApproxNet.load(tmp_path / "approx", teacher=model)


def test_distill_under_torchrun_with_two_processes(workspace):
    """Two CPU processes (gloo) share each epoch's batches, reduce losses and quality, and write once."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [
        torchrun, "--standalone", "--nproc_per_node", "2", "-m", "sttabt.cli", "distill",
        "--teacher", str(workspace / "teacher"), "--task", "sst2", "--data-dir", str(workspace / "glue"),
        "--output", str(workspace / "ddp"), "--factor", "2", "--batch-size", "8", "--max-length", "32",
        "--no-progress", "--lr", "1e-3", "--general-epochs", "0", "--epochs", "2", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("dev attention KL") == 1  # one summary, from the main process
    record = json.loads((workspace / "ddp" / "distill_log.json").read_text())
    assert record["environment"]["processes"] == 2
    task = record["stages"]["task"]
    # 54 train examples = 7 batches of 8 -> 3 steps per process per epoch (the 7th batch is skipped)
    assert [e["steps"] for e in task["epochs"]] == [3, 3]
    # ... so each epoch trains on 54 examples less the skipped batch (8, or the short one of 6)
    assert all(e["train_examples"] in (46, 48) for e in task["epochs"])
    assert record["quality"]["examples"] == 12 and record["quality"]["distilled"]["examples"] == 12
    assert record["quality"]["distilled"]["kl"] < record["quality"]["untrained"]["kl"]
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    ApproxNet.load(workspace / "ddp", teacher=teacher)
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".ddp")) == []  # no debris


def test_a_base_encoder_without_a_head_can_be_the_general_teacher(workspace):
    """The reference's general teacher is a plain pre-trained encoder: its (missing) head is never read."""
    from transformers import BertModel

    base = tiny_teacher(seed=8)
    BertModel(base.config).save_pretrained(workspace / "encoder")  # no classification head at all
    tiny_tokenizer().save_pretrained(workspace / "encoder")
    assert _distill(workspace, "e", "--general-teacher", str(workspace / "encoder"), "--epochs", "1") == 0
    assert (workspace / "e" / "general").is_dir()
