"""Compress a CLUE text classifier (or a custom one) fine-tuned by run_seq_cls.py.

python compress_seq_cls.py --task_name tnews --model_name_or_path output/tnews
"""

from paddlenlp.transformers import AutoModelForSequenceClassification

import compression
import runtime
import utils


def main(argv=None):
    return compression.run_compression(utils.FAMILIES["seq_cls"], AutoModelForSequenceClassification, __doc__, argv)


if __name__ == "__main__":
    runtime.run_cli(main)
