"""Fine-tune, evaluate, predict and export a multiple-choice reader on C3 or CHID (ERNIE 3.0's CLUE table).

    python run_multiple_choice.py --task_name c3 --model_name_or_path ernie-3.0-medium-zh --do_train --do_eval
    python run_multiple_choice.py --task_name chid --train_file chid/train.json --dev_file chid/dev.json

C3 (default): the release's files ([[document lines], [{question, choice, answer}], id]); a folder holding
c3-d-<split>.json and c3-m-<split>.json reads both parts. Each choice is one text pair, [CLS] document [SEP] question
choice [SEP]: the question and the choice whole up to 64 and 32 tokens, the document cut to what the longest
question+choice leaves, the same for every choice of a question. Questions with fewer than 4 choices are padded with
choices masked out of the softmax, never predicted.

CHID: CLUE's json lines (passages with #idiomNNNNNN# blanks sharing 10 candidates; the answers in
<name>_answer.json beside the file) or FewCLUE's (one #idiom# blank, 7 candidates). Each candidate is one pair,
[CLS] candidate [SEP] window [SEP]: the window of the passage around the blank, the blank as four [MASK] and the
passage's other blanks as one [UNK]. The blanks of one line are decided together, each candidate used at most once
(the highest log-probability first), whatever batch they are in.

Metrics (eval_results.json): accuracy per question (C3) or per blank (CHID). Rows without choices or with an answer
not among them are left out and counted. Writes into --output_dir (default output/<task>): the best model,
train_results.json, eval_results.json, CLUE 1.1's c311_predict.json or chid11_predict.json (--do_predict) and
export/ (a program that scores one choice a row: infer.py and serve.py group the rows back into questions).
"""

import functools
import os

from paddlenlp.transformers import AutoModelForMultipleChoice

import runtime
import trainer_suite
import utils

FAMILY = utils.FAMILIES["multiple_choice"]


def write_choices(output_dir, examples, encoded, outputs, task) -> None:
    """CLUE 1.1's submission files, keyed by the examples' own ids: c311_predict.json, one {"id", "label": choice
    index} a line; chid11_predict.json, one object of blank tag -> candidate index."""
    chosen = utils.predicted_choices(task, examples, utils.question_scores(outputs[0], examples))
    path = os.path.join(output_dir, task.submission_file)
    given = [example.given_index(index) for example, index in zip(examples, chosen)]  # as the file lists them
    if task.assign_groups:
        runtime.write_json_atomic(path, {str(example.id): index for example, index in zip(examples, given)})
    else:
        runtime.write_json_lines_atomic(path, [{"id": e.id, "label": index} for e, index in zip(examples, given)])
    runtime.logger.info("wrote %d predictions to %s", len(chosen), path)


def main(argv=None):
    with trainer_suite.start_run(FAMILY, __doc__, argv) as run:
        data_args, training_args, task = run.data_args, run.training_args, run.task
        model, tokenizer = trainer_suite.load_model_and_tokenizer(run, AutoModelForMultipleChoice)
        splits = {
            split: utils.load_encoded_split(task, split, data_args, tokenizer)
            for split in trainer_suite.needed_splits(training_args)
        }
        dev_examples = splits["dev"][0] if "dev" in splits else None
        metrics = utils.choice_compute_metrics(task, dev_examples) if dev_examples else None
        collator = utils.family_collator(task, tokenizer)
        trainer = trainer_suite.build_trainer(run, model, tokenizer, splits, collator, metrics)

        trainer_suite.train_if_asked(run, trainer, splits)
        trainer_suite.evaluate_if_asked(run, trainer, splits)
        trainer_suite.predict_if_asked(run, trainer, splits, functools.partial(write_choices, task=task))
        trainer_suite.export_if_asked(run, trainer, tokenizer)


if __name__ == "__main__":
    runtime.run_cli(main)
