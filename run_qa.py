"""Fine-tune, evaluate, predict and export an extractive reader on CMRC2018.

    python run_qa.py --task_name cmrc2018 --model_name_or_path ernie-3.0-medium-zh --do_train --do_eval

Local files: SQuAD-style json (the CMRC2018 release format). Long contexts are cut into windows that start
every --doc_stride tokens (a step, as in BERT; not the overlap of Hugging Face's fast tokenizers); training
adds a window around any answer no stride window holds whole. Answers are chosen from the n-best start/end
pairs of all windows and sliced from the original context by character offsets.

Metrics (eval_results.json, in percent): exact_match and f1 as the official CMRC2018 script defines them
(mixed segmentation, punctuation removed, F1 from the longest common run, best over the gold answers),
and upstream PaddleNLP's simpler character-overlap scores as upstream_exact_match and upstream_f1.

Writes into --output_dir (default output/cmrc2018): the best model, train_results.json, eval_results.json,
cmrc2018_predict.json (question id -> answer) and cmrc2018_nbest.json (--do_predict), and export/.
"""

import functools
import os

from paddlenlp.transformers import AutoModelForQuestionAnswering

import arguments
import runtime
import trainer_suite
import utils

FAMILY = utils.FAMILIES["qa"]
# paddlenlp 3.0.0b4's Trainer looks for "QusetionAnswering" (sic) in the model's class name to pick these,
# so without them it would look for a "labels" input and never compute a loss or metrics.
LABEL_NAMES = ["start_positions", "end_positions"]


def write_answers(output_dir, examples, features, outputs, task, window_args) -> None:
    predictions, nbest = utils.postprocess_qa_predictions(
        examples, features, outputs[0], outputs[1], window_args.n_best_size, window_args.max_answer_length
    )
    runtime.write_json_atomic(os.path.join(output_dir, task.submission_file), predictions)
    runtime.write_json_atomic(os.path.join(output_dir, "cmrc2018_nbest.json"), nbest)
    runtime.logger.info(
        "wrote answers to %d questions to %s", len(predictions), os.path.join(output_dir, task.submission_file)
    )


def main(argv=None):
    with trainer_suite.start_run(FAMILY, __doc__, argv, extra_classes=(arguments.QAWindowArguments,)) as run:
        (window_args,), data_args, training_args, task = run.extra, run.data_args, run.training_args, run.task
        training_args.label_names = training_args.label_names or LABEL_NAMES
        model, tokenizer = trainer_suite.load_model_and_tokenizer(run, AutoModelForQuestionAnswering)
        splits = {
            split: utils.load_encoded_split(task, split, data_args, tokenizer, window_args)
            for split in trainer_suite.needed_splits(training_args)
        }
        dev_examples, dev_features = splits.get("dev", (None, None))
        metrics = utils.qa_compute_metrics(dev_examples, dev_features, window_args) if dev_features else None
        trainer = trainer_suite.build_trainer(
            run, model, tokenizer, splits, utils.family_collator(task, tokenizer), metrics
        )

        trainer_suite.train_if_asked(run, trainer, splits)
        trainer_suite.evaluate_if_asked(run, trainer, splits)
        trainer_suite.predict_if_asked(
            run, trainer, splits, functools.partial(write_answers, task=task, window_args=window_args)
        )
        trainer_suite.export_if_asked(run, trainer, tokenizer)


if __name__ == "__main__":
    runtime.run_cli(main)
