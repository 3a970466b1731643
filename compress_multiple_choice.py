"""Compress a C3 or CHID reader fine-tuned by run_multiple_choice.py.

python compress_multiple_choice.py --task_name c3 --model_name_or_path output/c3
"""

from paddlenlp.transformers import AutoModelForMultipleChoice

import compression
import runtime
import utils


def main(argv=None):
    return compression.run_compression(utils.FAMILIES["multiple_choice"], AutoModelForMultipleChoice, __doc__, argv)


if __name__ == "__main__":
    runtime.run_cli(main)
