"""Fine-tune, evaluate, predict and export a named-entity tagger on MSRA_NER.

    python run_token_cls.py --task_name msra_ner --model_name_or_path ernie-3.0-medium-zh --do_train --do_eval

Local files: PaddleNLP's msra_ner tsv (characters and tags joined by \\002, a tab between) or BIO columns
('char tag' lines, a blank line between sentences). MSRA_NER has no dev split; its test split is the
evaluation set (as in every published number). Metrics are entity-level precision, recall and F1 with
exact span and type (seqeval), on the part of each sentence the model saw; truncated sentences are counted.

Writes into --output_dir (default output/msra_ner): the best model, train_results.json, eval_results.json,
msra_ner_predict.json (--do_predict: each sentence's entities with character offsets) and export/.
"""

import functools
import os

from paddlenlp.transformers import AutoModelForTokenClassification

import runtime
import trainer_suite
import utils

FAMILY = utils.FAMILIES["token_cls"]


def write_entities(output_dir, examples, encoded, outputs, task) -> None:
    """One JSON object a line, in input order: {"id", "text", "entities": [{"text", "type", "start", "end"}]}."""
    path = os.path.join(output_dir, task.submission_file)
    tags = utils.predicted_word_tags(outputs[0], encoded, examples, task.labels)
    rows = [
        {"id": example.id, "text": example.text, "entities": utils.entities_from_tags(example.words, sentence_tags)}
        for example, sentence_tags in zip(examples, tags)
    ]
    runtime.write_json_lines_atomic(path, rows)
    runtime.logger.info("wrote the entities of %d sentences to %s", len(rows), path)


def main(argv=None):
    with trainer_suite.start_run(FAMILY, __doc__, argv) as run:
        data_args, training_args, task = run.data_args, run.training_args, run.task
        model, tokenizer = trainer_suite.load_model_and_tokenizer(run, AutoModelForTokenClassification)
        splits = {
            split: utils.load_encoded_split(task, split, data_args, tokenizer)
            for split in trainer_suite.needed_splits(training_args)
        }
        collator = utils.family_collator(task, tokenizer)
        trainer = trainer_suite.build_trainer(
            run, model, tokenizer, splits, collator, utils.token_cls_metrics(task.labels)
        )

        trainer_suite.train_if_asked(run, trainer, splits)
        trainer_suite.evaluate_if_asked(run, trainer, splits)
        trainer_suite.predict_if_asked(run, trainer, splits, functools.partial(write_entities, task=task))
        trainer_suite.export_if_asked(run, trainer, tokenizer)


if __name__ == "__main__":
    runtime.run_cli(main)
