"""Vocabulary pruning (ERNIE 3.0 Tiny's recipe): keep the word-embedding rows of the tokens the task's training data
uses, plus the special tokens, at most a given number, and read every other token as [UNK].

The tokenizer and its vocabulary file are left as they are, on purpose: WordPiece splits a word by the longest pieces
its vocabulary holds, so a pruned vocabulary file would split some words into other pieces rather than into [UNK].
Instead the model's program starts with a table from the full vocabulary's ids to the kept rows (dropped ids to
[UNK]'s row), so every text gets exactly the tokens it had before, or [UNK] where its token was dropped, on every
backend the program is converted to, and nothing in serving changes.

Imports runtime.py.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, List, Optional

import numpy as np
import paddle

from runtime import UserError


@dataclass(frozen=True)
class KeptVocabulary:
    """The full vocabulary's ids that keep an embedding row (ascending), and the row every other id reads."""

    kept_ids: np.ndarray
    unknown_id: int
    full_size: int

    def id_map(self) -> np.ndarray:
        """Full-vocabulary id -> row of the pruned embedding; dropped ids -> [UNK]'s row."""
        rows = np.searchsorted(self.kept_ids, self.unknown_id)
        table = np.full(self.full_size, rows, dtype="int32")
        table[self.kept_ids] = np.arange(len(self.kept_ids), dtype="int32")
        return table


def used_token_counts(sequences: Iterable[dict]) -> Counter:
    """How often each token id occurs in the encoded sequences' input_ids."""
    counts = Counter()
    for sequence in sequences:
        counts.update(int(i) for i in sequence["input_ids"])
    return counts


def kept_vocabulary(
    counts: Counter, special_ids: List[int], unknown_id: int, full_size: int, max_size: Optional[int] = None
) -> KeptVocabulary:
    """The special tokens (the padding one among them) and the used tokens, the most frequent first when max_size
    caps them (ties: lower id)."""
    special = sorted(set(special_ids) | {unknown_id})
    if max_size is not None and max_size < len(special) + 1:
        raise UserError(f"--max_vocab_size {max_size} leaves no room beside the {len(special)} special tokens")
    used = sorted((i for i in counts if i not in special), key=lambda i: (-counts[i], i))
    if max_size is not None:
        used = used[: max_size - len(special)]
    kept = np.array(sorted(set(special) | set(used)), dtype="int64")
    if kept.size and kept[-1] >= full_size:
        raise UserError(f"token id {int(kept[-1])} is outside the model's {full_size}-token vocabulary")
    return KeptVocabulary(kept, unknown_id, full_size)


class PrunedWordEmbedding(paddle.nn.Layer):
    """A word embedding over the kept tokens that takes the full vocabulary's ids: a gather through the id table,
    then the lookup (both in the exported program)."""

    def __init__(self, embedding: paddle.nn.Embedding, vocabulary: KeptVocabulary):
        super().__init__()
        weight = embedding.weight.numpy()[vocabulary.kept_ids]
        padding = getattr(embedding, "_padding_idx", None)
        if padding is not None and padding >= 0:  # Paddle's lookup gives zeros for its padding id: so does this one
            if padding not in vocabulary.kept_ids:
                raise UserError(f"the kept vocabulary lacks the padding token (id {padding})")
            # zeroed, not looked up with padding_idx: paddle2onnx would store a second, masked copy of the table
            weight[vocabulary.id_map()[padding]] = 0.0
        self.register_buffer("id_map", paddle.to_tensor(vocabulary.id_map()))
        self.weight = self.create_parameter(list(weight.shape), dtype=str(weight.dtype))
        self.weight.set_value(weight)

    def forward(self, input_ids):
        rows = paddle.gather_nd(self.id_map, input_ids.unsqueeze(-1))
        return paddle.nn.functional.embedding(rows, self.weight)


def word_embeddings_owner(model):
    """The module whose word_embeddings attribute is the model's token embedding (ERNIE, BERT: .embeddings)."""
    base = getattr(model, model.base_model_prefix, model)
    owner = getattr(base, "embeddings", None)
    if not isinstance(getattr(owner, "word_embeddings", None), (paddle.nn.Embedding, PrunedWordEmbedding)):
        raise UserError(f"vocabulary pruning needs a word embedding; {type(model).__name__} has none")
    return owner


def embedding_rows(model) -> int:
    """The number of token ids the model's word embedding takes (the tokenizer's vocab_size can be fewer: a
    vocabulary file's repeated lines share an id)."""
    embedding = word_embeddings_owner(model).word_embeddings
    return len(embedding.id_map) if isinstance(embedding, PrunedWordEmbedding) else embedding.weight.shape[0]


def prune_vocabulary(model, vocabulary: KeptVocabulary):
    """Replace the model's word embedding by the kept rows (in place; returns the model)."""
    owner = word_embeddings_owner(model)
    if isinstance(owner.word_embeddings, PrunedWordEmbedding):
        raise UserError("this model's vocabulary is pruned already")
    if owner.word_embeddings.weight.shape[0] != vocabulary.full_size:
        raise UserError(
            f"the model's embedding has {owner.word_embeddings.weight.shape[0]} rows, the vocabulary "
            f"{vocabulary.full_size} tokens"
        )
    owner.word_embeddings = PrunedWordEmbedding(owner.word_embeddings, vocabulary)
    return model
