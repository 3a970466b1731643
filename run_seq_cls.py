"""Fine-tune, evaluate, predict and export a sequence classifier on a CLUE classification task.

Tasks: afqmc, tnews, iflytek, cmnli, ocnli, cluewsc2020, csl, or custom (your own CLUE-style json lines
with --label_list). Any Chinese encoder that PaddleNLP's Auto classes load works through
--model_name_or_path (ERNIE 3.0 sizes, ERNIE-Gram, BERT, RoBERTa-wwm-ext, RBT6, Mengzi-BERT, ...).

    python run_seq_cls.py --task_name tnews --model_name_or_path ernie-3.0-medium-zh --do_train

Writes into --output_dir (default output/<task>): the best model, train_results.json, eval_results.json,
the CLUE submission file (--do_predict) and export/ (--do_export).
"""
import os

import utils
from paddlenlp.transformers import AutoModelForSequenceClassification

FAMILY = "seq_cls"


def write_submission(path, task, ids, logits) -> None:
    """One JSON object a line, {"id": <the example's own id>, "label": "<label string>"}, in input order."""
    labels = [task.labels[index] for index in logits.argmax(axis=-1)]
    utils.write_json_lines_atomic(path, [{"id": example_id, "label": label} for example_id, label in zip(ids, labels)])
    utils.logger.info("wrote %d predictions to %s", len(ids), path)


def main(argv=None):
    run = utils.start_run(FAMILY, __doc__, argv)
    data_args, training_args, task = run.data_args, run.training_args, run.task
    model, tokenizer = utils.load_model_and_tokenizer(run, AutoModelForSequenceClassification)
    splits = {split: utils.load_encoded_split(task, split, data_args, tokenizer) for split in utils.needed_splits(training_args)}
    trainer = utils.build_trainer(run, model, tokenizer, splits, utils.family_collator(FAMILY, tokenizer), utils.compute_accuracy_metrics)

    if training_args.do_train:
        utils.train_and_save(trainer, run.resume_checkpoint, len(splits["train"][0]))
    if training_args.do_eval:
        dev = splits["dev"][1]
        utils.evaluate_and_save(trainer, dev.dataset, [task.metric], {"eval_samples": len(dev.ids), "eval_truncated": dev.truncated})
    if training_args.do_predict:
        test = splits["test"][1]
        logits = utils.predict_logits(trainer, test.dataset)
        if training_args.should_save:
            write_submission(os.path.join(training_args.output_dir, task.submission_file), task, test.ids, logits)
    utils.export_if_asked(run, trainer, tokenizer)


if __name__ == "__main__":
    utils.run_cli(main)
