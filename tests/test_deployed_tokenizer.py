"""The deployment tokenizer (model_io.WordPieceTokenizer on the Rust `tokenizers` library) against paddlenlp's
ErnieTokenizer/BertTokenizer, which training uses: the same model inputs for every family on real rows and on
hard strings; and the deployment scripts (infer.py, serve.py) never importing paddlenlp."""

import json
import os
import subprocess
import sys

import pytest

import model_io
import runtime
import utils
from arguments import QAWindowArguments
from conftest import DATA_DIR, clue_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Symbols paddlenlp splits off as words (℃ ° ～ ─ □ ①, category S) and CJK Extension E from U+2B820 (tokenizers' own
# CJK ranges start it at U+2B920) broke simpler versions; the rest guard accents and ligatures, special tokens inside
# raw text (kept whole, case-sensitive), zero-width and control characters, words over 100 characters, other scripts.
HARD_TEXTS = [
    "温度40℃，时间1h",
    "南纬约60°处",
    "2009年～2014年担任",
    "的国家──挪威",
    "丙辰□□□□戊午",
    "①②③ Ⅻ ½ x²+y³",
    "𠀀𪜀𫝀𫠠𬺰 扩展汉字",
    "Äußeres café naïve ﬁnance İstanbul ΣΑΣ σας",
    "句子[SEP]另一句 [sep] [CLS]x",
    "零\u200b宽\x00空\ufffd格",
    "不\u00a0换行\t制表\n换行\r回车\u3000全角空格",
    "ＡＢＣ１２３，全角",
    "表情😀符号👍🏽",
    "a" * 120 + " 长词",
    "e-mail: a.b@c.com $5 ^_^ `~",
    "العربية हिन्दी ไทย 한국어 日本語のテキスト",
    "\u0301\u0308组合符",
    "",
]


@pytest.fixture(scope="module", params=["ernie", "bert"])
def tokenizer_pair(request, tiny_encoders):
    """(paddlenlp's tokenizer, the deployment tokenizer) of one saved tokenizer folder."""
    folder = tiny_encoders[request.param]
    deployed = model_io.load_deployed_tokenizer(folder)
    assert isinstance(deployed, model_io.WordPieceTokenizer)
    return model_io.load_tokenizer(folder), deployed


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_hard_texts_give_paddlenlps_tokens_and_ids(tokenizer_pair, text):
    reference, deployed = tokenizer_pair
    assert deployed.tokenize(text) == reference.tokenize(text)
    assert deployed.convert_tokens_to_ids(deployed.tokenize(text)) == reference.convert_tokens_to_ids(
        reference.tokenize(text)
    )


@pytest.mark.parametrize(
    "task_name, path, max_seq_length",
    [
        ("tnews", clue_file("tnews", "dev"), 128),
        ("tnews", clue_file("tnews", "dev"), 12),
        ("afqmc", clue_file("afqmc", "dev"), 128),
        ("afqmc", clue_file("afqmc", "dev"), 20),  # pairs cut longest first
        ("csl", clue_file("csl", "dev"), 64),
        ("cluewsc2020", clue_file("cluewsc2020", "dev"), 128),
        ("msra_ner", os.path.join(DATA_DIR, "msra_ner", "dev.tsv"), 128),
        ("msra_ner", os.path.join(DATA_DIR, "msra_ner", "dev.tsv"), 16),
        ("cmrc2018", os.path.join(DATA_DIR, "cmrc2018", "dev.json"), 128),
    ],
)
def test_real_rows_encode_to_the_same_features(tokenizer_pair, task_name, path, max_seq_length):
    task = utils.ALL_TASKS[task_name]
    examples = utils.load_examples(task, "dev", path)
    reference, deployed = (
        utils.encode_examples(
            task, "dev", examples, tokenizer, max_seq_length, True, QAWindowArguments(doc_stride=32), with_labels=True
        )
        for tokenizer in tokenizer_pair
    )
    assert len(deployed.dataset) == len(reference.dataset) >= len(examples)
    assert deployed.dataset == reference.dataset  # ids, token types and labels
    if hasattr(deployed, "offsets"):  # QA windows
        assert deployed.offsets == [[o and tuple(o) for o in window] for window in reference.offsets]
    if hasattr(deployed, "word_positions"):  # NER
        assert deployed.word_positions == reference.word_positions
    if max_seq_length < 32:
        assert deployed.truncated == reference.truncated > 0


def test_offsets_of_unknown_words_cover_the_word_exactly(tokenizer_pair):
    """paddlenlp's offsets of an [UNK] word are found by searching the text and can take in the next space
    ("ﬁnance café": (0, 7)); the deployment tokenizer's are the word's characters."""
    _, deployed = tokenizer_pair
    text = "ﬁnance café 40℃"
    encoded = deployed(text, return_offsets_mapping=True)
    assert deployed.tokenize(text) == ["[UNK]", "cafe", "40", "℃"]
    assert encoded["offset_mapping"] == [(0, 6), (7, 11), (12, 14), (14, 15)]
    assert encoded["input_ids"] == deployed.convert_tokens_to_ids(["[UNK]", "cafe", "40", "℃"])


def test_other_tokenizers_and_added_tokens_go_through_paddlenlp(tiny_encoders, tmp_path):
    assert not isinstance(model_io.load_deployed_tokenizer(tiny_encoders["roberta"]), model_io.WordPieceTokenizer)
    folder = tmp_path / "added"
    reference = model_io.load_tokenizer(tiny_encoders["ernie"])
    reference.add_tokens(["[NEW]"])
    reference.save_pretrained(str(folder))
    assert json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("added_tokens_decoder")
    assert not isinstance(model_io.load_deployed_tokenizer(str(folder)), model_io.WordPieceTokenizer)


def test_a_vocab_without_special_tokens_is_one_error(tiny_encoders, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n[UNK]\n", encoding="utf-8")
    with pytest.raises(
        runtime.UserError, match=r"vocab.txt lacks the special tokens \[PAD\], \[CLS\], \[SEP\], \[MASK\]"
    ):
        model_io.WordPieceTokenizer(str(vocab))


def test_infer_and_serve_never_import_paddlenlp(tnews_run):
    """infer.py predicts with an exported model, and serve.py's modules load, in a process without paddlenlp
    (importing it costs ~2.6 s and ~290 MB of resident memory)."""
    code = (
        "import sys, infer, serve\n"
        f"print(infer.main(['--model_path', {os.path.join(tnews_run, 'export')!r}, '--text', '今天天气很好']))\n"
        "print('paddlenlp modules:', sorted(m for m in sys.modules if m.split('.')[0] in ('paddlenlp', 'datasets')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "paddlenlp modules: []" in done.stdout
    assert '"text": "今天天气很好", "label": "1' in done.stdout  # TNEWS labels are 100-116
