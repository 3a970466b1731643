"""Fine-tune, evaluate, predict and export a sequence classifier on a CLUE classification task.

Tasks: afqmc, tnews, iflytek, cmnli, ocnli, cluewsc2020, csl, or custom (your own CLUE-style json lines
with --label_list). Any Chinese encoder that PaddleNLP's Auto classes load works through
--model_name_or_path (ERNIE 3.0 sizes, ERNIE-Gram, BERT, RoBERTa-wwm-ext, RBT6, Mengzi-BERT, ...).

    python run_seq_cls.py --task_name tnews --model_name_or_path ernie-3.0-medium-zh --do_train

Writes into --output_dir (default output/<task>): the best model, train_results.json, eval_results.json,
the CLUE submission file (--do_predict) and export/ (--do_export).
"""

import functools
import os

from paddlenlp.transformers import AutoModelForSequenceClassification

import runtime
import trainer_suite
import utils

FAMILY = utils.FAMILIES["seq_cls"]


def write_submission(output_dir, examples, encoded, outputs, task) -> None:
    """One JSON object a line, {"id": <the example's own id>, "label": "<label string>"}, in input order."""
    path = os.path.join(output_dir, task.submission_file)
    labels = [task.labels[index] for index in outputs[0].argmax(axis=-1)]
    runtime.write_json_lines_atomic(
        path, [{"id": example.id, "label": label} for example, label in zip(examples, labels)]
    )
    runtime.logger.info("wrote %d predictions to %s", len(labels), path)


def main(argv=None):
    with trainer_suite.start_run(FAMILY, __doc__, argv) as run:
        data_args, training_args, task = run.data_args, run.training_args, run.task
        model, tokenizer = trainer_suite.load_model_and_tokenizer(run, AutoModelForSequenceClassification)
        splits = {
            split: utils.load_encoded_split(task, split, data_args, tokenizer)
            for split in trainer_suite.needed_splits(training_args)
        }
        trainer = trainer_suite.build_trainer(
            run, model, tokenizer, splits, utils.family_collator(task, tokenizer), utils.compute_accuracy_metrics
        )

        trainer_suite.train_if_asked(run, trainer, splits)
        trainer_suite.evaluate_if_asked(run, trainer, splits)
        trainer_suite.predict_if_asked(run, trainer, splits, functools.partial(write_submission, task=task))
        trainer_suite.export_if_asked(run, trainer, tokenizer)


if __name__ == "__main__":
    runtime.run_cli(main)
