"""Compress a CMRC2018 reader fine-tuned by run_qa.py.

python compress_qa.py --task_name cmrc2018 --model_name_or_path output/cmrc2018
"""

from paddlenlp.transformers import AutoModelForQuestionAnswering

import compression
import runtime
import utils


def main(argv=None):
    return compression.run_compression(utils.FAMILIES["qa"], AutoModelForQuestionAnswering, __doc__, argv)


if __name__ == "__main__":
    runtime.run_cli(main)
