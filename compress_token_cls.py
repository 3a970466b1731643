"""Compress an MSRA_NER tagger fine-tuned by run_token_cls.py.

python compress_token_cls.py --task_name msra_ner --model_name_or_path output/msra_ner
"""

from paddlenlp.transformers import AutoModelForTokenClassification

import compression
import runtime
import utils


def main(argv=None):
    return compression.run_compression(utils.FAMILIES["token_cls"], AutoModelForTokenClassification, __doc__, argv)


if __name__ == "__main__":
    runtime.run_cli(main)
