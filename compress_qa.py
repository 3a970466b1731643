"""Compress a CMRC2018 reader fine-tuned by run_*.py: DynaBERT width pruning with distillation, then int8
post-training quantization over a grid of calibration settings; every candidate is measured on the dev set
and the best one within --max_metric_drop points of the float parent is chosen.

    python compress_qa.py --task_name cmrc2018 --model_name_or_path output/cmrc2018

Strategies: dynabert+ptq (default), dynabert, ptq. PTQ algorithms (--algo_list): hist (activation range
from a histogram's 99.99th percentile), mse (the range that minimises quantization mean squared error),
avg (mean of per-batch maxima), abs_max (the largest value seen), KL (the range minimising KL divergence;
very slow), emd. Calibration batches come from the training data, never from the dev set.

Writes into --output_dir (default <model_name_or_path>/compress): parent/ (the float parent, exported for
comparison), width_mult_0.75/ (the pruned float model), [width_mult_0.75/]<algo><batch size>_<batches>/ (each
int8 candidate), and compress_report.json. Every candidate directory is servable by infer.py.
"""
import utils
from paddlenlp.transformers import AutoModelForQuestionAnswering


def main(argv=None):
    return utils.run_compression("qa", AutoModelForQuestionAnswering, __doc__, argv)


if __name__ == "__main__":
    utils.run_cli(main)
