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
from paddlenlp.data import DataCollatorWithPadding
from paddlenlp.trainer import set_seed
from paddlenlp.transformers import AutoModelForSequenceClassification

FAMILY = "seq_cls"


def load_split(task, split, data_args, tokenizer) -> utils.EncodedSplit:
    examples = utils.load_examples(task, split, data_args.split_file(split), data_args.split_max_samples(split))
    encoded = utils.encode_text_examples(examples, tokenizer, task, data_args.max_seq_length, data_args.truncate_long_texts)
    utils.report_truncation(task.name, split, encoded, data_args.max_seq_length)
    return encoded


def write_submission(path, task, ids, logits) -> None:
    """One JSON object a line, {"id": <the example's own id>, "label": "<label string>"}, in input order."""
    labels = [task.labels[index] for index in logits.argmax(axis=-1)]
    utils.write_json_lines_atomic(path, [{"id": example_id, "label": label} for example_id, label in zip(ids, labels)])
    utils.logger.info("wrote %d predictions to %s", len(ids), path)


def main(argv=None):
    run = utils.start_run(FAMILY, __doc__, argv)
    model_args, data_args, training_args, task = run.model_args, run.data_args, run.training_args, run.task

    set_seed(training_args.seed)
    tokenizer = utils.load_tokenizer(model_args.model_name_or_path)
    model = utils.load_task_model(
        AutoModelForSequenceClassification, model_args.model_name_or_path, task, data_args.max_seq_length, model_args.dropout
    )
    splits = {split: load_split(task, split, data_args, tokenizer) for split in utils.needed_splits(training_args)}

    trainer = utils.SuiteTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"].dataset if "train" in splits else None,
        eval_dataset=splits["dev"].dataset if "dev" in splits else None,
        tokenizer=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=utils.compute_accuracy_metrics,
        callbacks=utils.early_stopping_callbacks(model_args.early_stopping_patience),
    )
    if training_args.do_train:
        utils.train_and_save(trainer, run.resume_checkpoint, len(splits["train"].ids))
    if training_args.do_eval:
        dev = splits["dev"]
        utils.evaluate_and_save(trainer, dev.dataset, [task.metric], {"eval_samples": len(dev.ids), "eval_truncated": dev.truncated})
    if training_args.do_predict:
        test = splits["test"]
        logits = utils.predict_logits(trainer, test.dataset)
        if training_args.should_save:
            write_submission(os.path.join(training_args.output_dir, task.submission_file), task, test.ids, logits)
    if training_args.do_export and training_args.should_save:
        utils.export_static_model(
            trainer.model, tokenizer, os.path.join(training_args.output_dir, "export"), utils.task_info(task, data_args)
        )


if __name__ == "__main__":
    utils.run_cli(main)
