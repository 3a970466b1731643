"""Small random-weight encoders built from the real ERNIE 3.0 configuration and vocabulary.

Used by the tests and by the README's offline quick start:

    python tests/tiny_models.py ernie /tmp/tiny-ernie

The saved directory loads with ``--model_name_or_path DIR`` like a downloaded checkpoint.
"""

import argparse
import os
import sys

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ernie-3.0-vocab.txt")

# The shape of ernie-3.0-*-zh (paddlenlp ernie/configuration.py) shrunk to a few thousand parameters per layer.
TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    hidden_act="gelu",
    max_position_embeddings=2048,
    vocab_size=40000,
)
ERNIE_EXTRAS = dict(type_vocab_size=4, task_type_vocab_size=16, use_task_id=True)


def _model_classes(kind):
    from paddlenlp.transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        ErnieConfig,
        ErnieModel,
        ErnieTokenizer,
        RobertaChineseTokenizer,
        RobertaConfig,
        RobertaModel,
    )

    classes = {
        "ernie": (ErnieConfig, ErnieModel, ErnieTokenizer, ERNIE_EXTRAS),
        "bert": (BertConfig, BertModel, BertTokenizer, dict(type_vocab_size=2)),
        "roberta": (RobertaConfig, RobertaModel, RobertaChineseTokenizer, dict(type_vocab_size=2)),
    }
    if kind not in classes:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {sorted(classes)}")
    return classes[kind]


def build_tiny_encoder(kind, output_dir, seed=0):
    """Save a random-weight pretrained-style encoder (no task head) and its tokenizer to output_dir."""
    import paddle

    config_class, model_class, tokenizer_class, extras = _model_classes(kind)
    paddle.seed(seed)
    config = config_class(**TINY_ENCODER, **extras)
    model_class(config).save_pretrained(output_dir)
    tokenizer_class(vocab_file=VOCAB_FILE).save_pretrained(output_dir)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["ernie", "bert", "roberta"])
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    build_tiny_encoder(args.kind, args.output_dir)
    print(f"saved a tiny random-weight {args.kind} encoder to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(main())
