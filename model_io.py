"""Models in and out: loading a tokenizer and a model by name or from a directory (with the checks that a
model fits its task), the deployment tokenizer (WordPiece on the Rust tokenizers library, no paddlenlp), and
static export (the PIR program infer.py serves, and the legacy program quantization reads) into the folder format
that model_folder.py owns. paddle and paddlenlp are imported inside the functions that load, convert or export
a model: the deployment tokenizer needs neither (a deploy-only install, requirements-deploy.txt, has neither).

Imports model_folder.py, runtime.py and utils.py.
"""

import contextlib
import os
from typing import List, Optional, Tuple

from model_folder import EXPORT_INPUT_NAMES, TaskFile, write_task_file
from runtime import UserError, atomic_directory, first_line, logger, read_json_file
from utils import FAMILIES, Family, TaskSpec


def could_not_load(what: str, name_or_path: str, error: BaseException) -> UserError:
    if os.path.isdir(name_or_path):
        return UserError(f"could not load the {what} from {name_or_path} ({first_line(error)})")
    logger.info("loading %r failed: %s", name_or_path, error)
    return UserError(
        f"could not download model {name_or_path!r} (no internet, or not a PaddleNLP model name): "
        "pass --model_name_or_path DIR with a local copy (config.json, weights, vocab.txt)"
    )


def load_tokenizer(name_or_path: str):
    """AutoTokenizer, falling back to the class named in tokenizer_config.json.

    paddlenlp 3.0.0b4's AutoTokenizer cannot reload a saved RobertaChineseTokenizer (the tokenizer of
    hfl/roberta-wwm-ext and hfl/rbt6): "Tokenizer class RobertaChineseTokenizer does not exist".
    """
    from paddlenlp.transformers import AutoTokenizer  # here, not at the top: see load_deployed_tokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except ValueError as error:
        class_name = saved_tokenizer_config(name_or_path).get("tokenizer_class")
        import paddlenlp.transformers as transformers

        if class_name and hasattr(transformers, class_name):
            return getattr(transformers, class_name).from_pretrained(name_or_path)
        raise could_not_load("tokenizer", name_or_path, error) from None
    except Exception as error:  # download failures come as OSError, RuntimeError or requests errors
        raise could_not_load("tokenizer", name_or_path, error) from None


def saved_tokenizer_config(directory: str) -> dict:
    """A saved tokenizer's tokenizer_config.json ({} when the folder has none: a model name, or no saved tokenizer)."""
    path = os.path.join(directory, "tokenizer_config.json")
    return read_json_file(path, "tokenizer_config.json") if os.path.isfile(path) else {}


WORDPIECE_TOKENIZER_CLASSES = ("ErnieTokenizer", "BertTokenizer")


def load_deployed_tokenizer(model_dir: str):
    """The tokenizer that infer.py, serve.py and the candidate measurements of compress_*.py encode with.

    A saved ErnieTokenizer or BertTokenizer (vocab.txt, no added tokens) is read into WordPieceTokenizer, which
    gives the same ids, token types and offsets without importing paddlenlp; any other tokenizer goes through
    paddlenlp (load_tokenizer), and an install without paddlenlp gets one line saying so."""
    config, vocab_file = saved_tokenizer_config(model_dir), os.path.join(model_dir, "vocab.txt")
    if (
        config.get("tokenizer_class") in WORDPIECE_TOKENIZER_CLASSES
        and not config.get("added_tokens_decoder")
        and os.path.isfile(vocab_file)
    ):
        return WordPieceTokenizer(vocab_file, bool(config.get("do_lower_case", True)))
    try:
        return load_tokenizer(model_dir)
    except ImportError as error:
        kind = config.get("tokenizer_class") or "no saved tokenizer_config.json"
        raise UserError(
            f"{model_dir}: its tokenizer ({kind}) is not a WordPiece one (ErnieTokenizer or BertTokenizer with "
            f"vocab.txt) and needs paddlenlp, which this install lacks ({first_line(error)}; a deploy-only install, "
            "requirements-deploy.txt?): serve it with the full install (requirements.txt)"
        ) from None


class WordPieceTokenizer:
    """BERT-style tokenization ([CLS] a [SEP] b [SEP]; text cleaned, CJK characters split, lower-cased and
    accents stripped with do_lower_case, then greedy WordPiece with [UNK]) on the Rust `tokenizers` library.
    It has the methods of paddlenlp's ErnieTokenizer that utils.py's encoders call, and gives their results
    (tests/test_deployed_tokenizer.py compares both on real rows of every family)."""

    SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
    # paddlenlp's BasicTokenizer makes a word of each CJK character (its ranges: `tokenizers` starts Extension E
    # at U+2B920, not U+2B820), each punctuation mark and each symbol (40℃ -> 40 ℃; Unicode categories P and S,
    # and the code points its _is_symbol adds)
    SPLIT_CHARACTERS = (
        r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}"
        r"\p{P}\p{S}\x{00AD}\x{00B2}\x{00BA}\x{3007}\x{00B5}\x{00D8}\x{014B}\x{01B1}]"
    )

    def __init__(self, vocab_file: str, do_lower_case: bool = True):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        with open(vocab_file, encoding="utf-8") as handle:
            self.vocab = {
                line.rstrip("\n"): index for index, line in enumerate(handle)
            }  # a repeated token: its last line
        missing = [token for token in self.SPECIAL_TOKENS if token not in self.vocab]
        if missing:
            raise UserError(f"{vocab_file} lacks the special tokens {', '.join(missing)}")
        self.unk_token_id, self.pad_token_id = self.vocab["[UNK]"], self.vocab["[PAD]"]
        self.cls_token_id, self.sep_token_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.backend = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        self.backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=False, strip_accents=do_lower_case, lowercase=do_lower_case
        )
        self.backend.pre_tokenizer = pre_tokenizers.Sequence(
            [  # BertPreTokenizer splits off punctuation only
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(self.SPLIT_CHARACTERS), behavior="isolated"),
            ]
        )
        self.backend.add_special_tokens(list(self.SPECIAL_TOKENS))  # kept whole in raw text, as paddlenlp does

    def tokenize(self, text: str) -> List[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: List[str]) -> List[int]:
        return [self.vocab.get(token, self.unk_token_id) for token in tokens]

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        if add_special_tokens:
            raise ValueError("WordPieceTokenizer encodes single texts without special tokens only")
        encoding = self.backend.encode(text, add_special_tokens=False)
        return {"input_ids": encoding.ids, **({"offset_mapping": encoding.offsets} if return_offsets_mapping else {})}

    @staticmethod
    def num_special_tokens_to_add(pair: bool = False) -> int:
        return 3 if pair else 2

    def build_inputs_with_special_tokens(self, ids: List[int], pair_ids: Optional[List[int]] = None) -> List[int]:
        first = [self.cls_token_id, *ids, self.sep_token_id]
        return first if pair_ids is None else first + [*pair_ids, self.sep_token_id]

    @staticmethod
    def create_token_type_ids_from_sequences(ids: List[int], pair_ids: Optional[List[int]] = None) -> List[int]:
        return [0] * (len(ids) + 2) + ([] if pair_ids is None else [1] * (len(pair_ids) + 1))

    def prepare_for_model(
        self,
        ids: List[int],
        pair_ids: Optional[List[int]] = None,
        max_length: Optional[int] = None,
        truncation: bool = False,
    ) -> dict:
        """Special tokens and token types, truncated longest first (a tie shortens the second text) to max_length."""
        ids, pair_ids = list(ids), None if pair_ids is None else list(pair_ids)
        excess = (
            len(ids) + len(pair_ids or ()) + self.num_special_tokens_to_add(pair_ids is not None) - (max_length or 0)
        )
        for _ in range(excess if truncation and max_length else 0):
            if not ids and not pair_ids:  # max_length below the special tokens: they stay
                break
            if pair_ids is None or len(ids) > len(pair_ids):
                ids.pop()
            else:
                pair_ids.pop()
        return {
            "input_ids": self.build_inputs_with_special_tokens(ids, pair_ids),
            "token_type_ids": self.create_token_type_ids_from_sequences(ids, pair_ids),
        }


def load_model_config(name_or_path: str):
    from paddlenlp.transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except Exception as error:
        raise could_not_load("model", name_or_path, error) from None


def model_head_family(config) -> Optional[Family]:
    """'seq_cls', 'token_cls' or 'qa' for a fine-tuned model's config; None for a pretrained encoder."""
    for architecture in getattr(config, "architectures", None) or []:
        for family in FAMILIES.values():
            if architecture.endswith(family.head_suffix):
                return family
    return None


def model_labels(config) -> Optional[List[str]]:
    id2label = getattr(config, "id2label", None) or {}
    labels = [id2label[i] for i in sorted(id2label)]
    return None if all(label == f"LABEL_{i}" for i, label in enumerate(labels)) else labels


def check_model_fits_task(config, name_or_path: str, task: TaskSpec) -> None:
    """A fine-tuned model may only be used for a task of its own kind with its own label list."""
    head = model_head_family(config)
    if head is None:
        return
    if head is not task.family:
        raise UserError(
            f"{name_or_path} is a fine-tuned {head.title} model, but task {task.name} needs a "
            f"{task.family.title} model; use {head.script}, or start from a pretrained encoder"
        )
    if not task.family.labels_in_head:
        return
    labels = model_labels(config)
    if labels is None and config.num_labels != len(task.labels) or labels is not None and labels != list(task.labels):
        trained_for = getattr(config, "finetuning_task", None) or "another task"
        raise UserError(
            f"{name_or_path} was fine-tuned for {trained_for} with {config.num_labels} labels, which does not fit "
            f"task {task.name} ({len(task.labels)} labels); start from a pretrained encoder or pass the matching "
            f"--task_name"
        )


def configure_for_task(config, task: TaskSpec, dropout: Optional[float] = None):
    """Record the task and its labels (multiple choice: how many choices a question has) in the config, so a saved
    model says what it was trained for."""
    if task.max_choices:
        config.num_choices = task.max_choices
    config.num_labels = len(task.labels)
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: index for index, label in enumerate(task.labels)}
    config.finetuning_task = task.name
    if dropout is not None:
        config.hidden_dropout_prob = dropout
        config.classifier_dropout = dropout
    return config


def load_task_model(
    model_class, name_or_path: str, task: TaskSpec, max_seq_length: int, dropout: Optional[float] = None
):
    """Config, checks, then the model with a head sized for the task."""
    config = load_model_config(name_or_path)
    check_model_fits_task(config, name_or_path, task)
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_seq_length > positions:
        raise UserError(f"--max_seq_length {max_seq_length} exceeds the model's {positions} position embeddings")
    configure_for_task(config, task, dropout)
    import paddle

    try:
        # Fresh parameter names (embedding_0, ...) however many models this process built before: the
        # optimizer state in a checkpoint is keyed by them, so resuming needs the same names.
        with paddle.utils.unique_name.guard():
            return model_class.from_pretrained(name_or_path, config=config)
    except Exception as error:
        raise could_not_load("model", name_or_path, error) from None


def task_file(task: TaskSpec, max_seq_length: int) -> TaskFile:
    """What a deployed model needs to know about its task (export/task.json)."""
    return TaskFile(task.name, task.family.name, tuple(task.labels), max_seq_length, task.metric)


def export_input_spec() -> list:
    """The exported models' inputs: int64 ids of any batch size and length, fed by name."""
    from paddle.static import InputSpec

    return [InputSpec(shape=[None, None], dtype="int64", name=name) for name in EXPORT_INPUT_NAMES]


def save_deployable(model_dir: str, tokenizer, info: TaskFile) -> None:
    """The tokenizer files and task.json beside a static model, so infer.py can serve that directory."""
    tokenizer.save_pretrained(model_dir)
    write_task_file(model_dir, info)


def static_copy(model):
    """An eval-mode copy to convert: paddle.jit.to_static converts a layer in place, and a model that went on
    to be trained or hooked after conversion runs as a static program (a masked DynaBERT student crashed)."""
    import copy

    duplicate = copy.deepcopy(model)
    duplicate.eval()
    one_choice_per_row(duplicate)
    zero_padding_rows(duplicate)
    return without_dropout(duplicate)


def zero_padding_rows(model) -> None:
    """Each embedding with a padding id gets that row zeroed and no padding id: the lookup gives the same zeros, and
    paddle2onnx stores no second, masked copy of the table (a 40,000-token word embedding was in model.onnx twice:
    123 MB more for the Medium shape, in every ONNX Runtime and OpenVINO candidate)."""
    import paddle

    for layer in model.sublayers(include_self=True):
        padding = getattr(layer, "_padding_idx", None)
        if isinstance(layer, paddle.nn.Embedding) and padding is not None and padding >= 0:
            weight = layer.weight.numpy()
            weight[padding] = 0.0
            layer.weight.set_value(weight)
            layer._padding_idx = None


@contextlib.contextmanager
def each_row_scored(model):
    """Inside, a multiple-choice model scores each input row on its own (one_choice_per_row), as the exported
    program does; afterwards it groups num_choices rows into a question again."""
    choices = getattr(model, "num_choices", None)
    one_choice_per_row(model)
    try:
        yield model
    finally:
        if choices is not None:
            model.num_choices = choices


def one_choice_per_row(model):
    """A multiple-choice model (paddlenlp's *ForMultipleChoice, whose num_choices rows make one question) made to
    score every input row on its own: the exported program takes [sequences, length] like every other family's and
    gives one score a sequence, so each question's choices need no padding to a common count. Other models are
    returned as they are."""
    if hasattr(model, "num_choices"):
        model.num_choices = 1
    return model


def without_dropout(model):
    """Dropout is the identity at inference, but an exported dropout op still runs (and copies) in Paddle
    Inference: without them batch-1 latency at 26 tokens drops 16% for nano and 6% for medium. With p = 0,
    paddle's dropout returns its input, so no op is exported. Only for copies that are converted."""
    import paddle

    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
        elif isinstance(layer, paddle.nn.MultiHeadAttention):
            layer.dropout = 0.0
    return model


def export_static_model(model, tokenizer, export_dir: str, info: TaskFile) -> str:
    """Save model as a static inference model (model.json or model.pdmodel + model.pdiparams), with the
    tokenizer files and task.json, into export_dir, atomically."""
    import paddle

    static_model = paddle.jit.to_static(static_copy(model), input_spec=export_input_spec(), full_graph=True)
    with atomic_directory(export_dir) as staging:
        paddle.jit.save(static_model, os.path.join(staging, "model"))
        save_deployable(staging, tokenizer, info)
    logger.info("exported the static inference model to %s", export_dir)
    return export_dir


def export_legacy_static_model(model, directory: str) -> Tuple[str, str]:
    """model.pdmodel + model.pdiparams in the legacy program format, which Paddle's post-training
    quantization reads (paddle 3.0.0: inside OldIrGuard; later releases can no longer export ERNIE this way)."""
    import paddle

    duplicate = static_copy(model)  # parameters can only be built outside OldIrGuard
    with paddle.pir_utils.OldIrGuard():
        paddle.jit.save(
            paddle.jit.to_static(duplicate, input_spec=export_input_spec(), full_graph=True),
            os.path.join(directory, "model"),
        )
    return os.path.join(directory, "model.pdmodel"), os.path.join(directory, "model.pdiparams")
