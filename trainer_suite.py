"""The Trainer workflow that every run_*.py shares: the opening (arguments, logging, device, task, checkpoint,
output-folder safety), data and model, the Trainer (paddlenlp's, with this suite's fixes, length-grouped batches
and checkpoints marked complete last, so that resuming never loads a half-written one), then train / evaluate /
predict / export blocks, each writing its results file.

Imports arguments.py, model_io.py, runtime.py and utils.py.
"""

import contextlib
import fnmatch
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import paddle
from paddlenlp.trainer import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

from arguments import DataArguments, ModelArguments, check_device, parse_arguments, user_argv
from model_io import export_static_model, load_task_model, load_tokenizer, task_file
from runtime import UserError, logger, output_lock, setup_logging, write_json_atomic
from utils import Family, TaskSpec, get_task

EARLIER_RESULTS = (
    "config.json",
    "model_state.pdparams",
    "model.safetensors",
    "*_results.json",
    "*_predict.json",
    "export",
    "checkpoint-*",
)


def earlier_results(output_dir: str, patterns: Sequence[str] = EARLIER_RESULTS) -> List[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if any(fnmatch.fnmatch(name, p) for p in patterns))


def planned_outputs(training_args, submission_file: str) -> List[str]:
    """The files an evaluation, prediction or export run writes into output_dir."""
    outputs = {"do_eval": "eval_results.json", "do_predict": submission_file, "do_export": "export"}
    return [name for action, name in outputs.items() if getattr(training_args, action)]


def check_output_dir(training_args, resume_checkpoint: Optional[str], submission_file: str) -> None:
    """Never replace a user's earlier results by accident.

    Training refuses an output_dir that holds results of an earlier run (unless resuming from it);
    evaluation, prediction and export refuse to replace the files they would write. Either way
    --overwrite_output_dir allows it.
    """
    if training_args.overwrite_output_dir:
        return
    output_dir = training_args.output_dir
    if training_args.do_train and not resume_checkpoint:
        found = earlier_results(output_dir)
    else:
        found = earlier_results(output_dir, planned_outputs(training_args, submission_file))
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UserError(
            f"--output_dir {output_dir} already holds results of an earlier run ({shown}); pass --overwrite_output_dir "
            "to replace them, --resume_from_checkpoint to continue training, or choose another --output_dir"
        )


def resolve_resume_checkpoint(training_args) -> Optional[str]:
    """--resume_from_checkpoint DIR (refused when incomplete), or 'true'/'last' for the newest complete checkpoint-*
    in --output_dir (each newer, incomplete one is reported and skipped)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("true", "last"):
        return newest_complete_checkpoint(training_args.output_dir, f"--resume_from_checkpoint {value}")
    if not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint: no such checkpoint directory: {value}")
    problem = checkpoint_problem(value)
    if problem:
        raise UserError(
            f"--resume_from_checkpoint {value} is incomplete ({problem}): resume from a complete checkpoint, or "
            "with 'true' for the newest complete one"
        )
    return value


# ---- checkpoints: complete (a marker written last lists every file and its size) or never loaded ------------------
CHECKPOINT_MARKER = "checkpoint_complete.json"


def checkpoint_folders(output_dir: str) -> List[str]:
    """The checkpoint-<step> folders of output_dir, the newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    steps = [
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        for match in [re.fullmatch(r"checkpoint-(\d+)", name)]
        if match and os.path.isdir(os.path.join(output_dir, name))
    ]
    return [os.path.join(output_dir, name) for _, name in sorted(steps, reverse=True)]


def newest_complete_checkpoint(output_dir: str, option: str) -> str:
    folders = checkpoint_folders(output_dir)
    if not folders:
        raise UserError(f"{option}: no checkpoint-* directory in {output_dir}")
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            logger.info("resuming from %s, the newest complete checkpoint", folder)
            return folder
        logger.warning("%s is incomplete (%s): not loaded", folder, problem)
    raise UserError(
        f"{option}: no complete checkpoint in {output_dir} ({', '.join(os.path.basename(f) for f in folders)} "
        f"incomplete: {checkpoint_problem(folders[0])}); train again without --resume_from_checkpoint"
    )


def checkpoint_problem(folder: str) -> Optional[str]:
    """Why a checkpoint folder is not complete, or None: its marker is missing, or a file it lists is missing or of
    another size (an interrupted save, a full disk)."""
    marker = os.path.join(folder, CHECKPOINT_MARKER)
    if not os.path.isfile(marker):
        return f"no {CHECKPOINT_MARKER}: its saving was interrupted"
    try:
        with open(marker, encoding="utf-8") as handle:
            files = json.load(handle)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{CHECKPOINT_MARKER} is damaged"
    for name, size in sorted(files.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} holds {os.path.getsize(path)} bytes, not {size}"
    return None


def mark_checkpoint_complete(folder: str, global_step: int) -> None:
    """Flush every file of a saved checkpoint to disk, then write the marker that lists them (written last)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            files[os.path.relpath(path, folder)] = os.path.getsize(path)
    files.pop(CHECKPOINT_MARKER, None)
    write_json_atomic(os.path.join(folder, CHECKPOINT_MARKER), {"global_step": global_step, "files": files})


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> List[List[int]]:
    """A random order cut into groups of `group` batches; each group sorted by length and cut into batches;
    the batches shuffled, the longest first (a memory problem shows at once)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = sorted(order[start : start + batch_size * group], key=lambda i: -lengths[i])
        batches.extend([int(i) for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size))
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


def feature_length(feature: dict) -> int:
    """Tokens of a feature's longest sequence (a multiple-choice feature holds one sequence a choice)."""
    ids = feature["input_ids"]
    return max(len(choice) for choice in ids) if ids and isinstance(ids[0], list) else len(ids)


class LengthGroupedBatchSampler(paddle.io.Sampler):
    """Batches of similar lengths, reshuffled each epoch (set_epoch, which the Trainer calls)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class SuiteTrainer(Trainer):
    """paddlenlp's Trainer with the fixes this suite needs on paddlenlp 3.0.0b4, and length-grouped batches."""

    def __init__(self, *args, group_by_length: bool = False, training_loss=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.training_loss = training_loss  # the family's (model, batch) -> (loss, logits), where it has one

    def compute_loss(self, model, inputs, return_outputs=False):
        if self.training_loss is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        loss, logits = self.training_loss(model, inputs)
        return (loss, (loss, logits)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # without labels paddlenlp calls model(**inputs), which would be handed the family's extra inputs
        # (multiple choice: choice_mask); the family's loss function knows them
        if self.training_loss is None or "labels" in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        with paddle.no_grad():
            _, logits = self.training_loss(model, self._prepare_inputs(inputs))
        return None, logits.detach(), None

    def _get_train_sampler(self):
        if not self.group_by_length or self.train_dataset is None:
            return super()._get_train_sampler()
        if self.args.world_size > 1:
            logger.warning(
                "--group_by_length applies to single-process training; %d processes use random batches",
                self.args.world_size,
            )
            return super()._get_train_sampler()
        lengths = [feature_length(feature) for feature in self.train_dataset]
        return LengthGroupedBatchSampler(lengths, self.args.per_device_train_batch_size, self.args.seed)

    def _save_checkpoint(self, model, metrics=None):
        """Save checkpoint-<step> and mark it complete last; rotate old checkpoints only after that, so an interrupted
        save never leaves fewer complete checkpoints than --save_total_limit."""
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):  # a dead run's incomplete save, or one resumed before it
            shutil.rmtree(folder)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, metrics=metrics)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            mark_checkpoint_complete(folder, self.state.global_step)
        # paddlenlp 3.0.0b4 rotates checkpoints only when local_rank == 0, and local_rank is -1 in a
        # single-process run, so --save_total_limit was ignored and every checkpoint stayed on disk.
        if self.args.local_rank in (-1, 0) and self.args.should_save:
            self._rotate_checkpoints(use_mtime=True, output_dir=self.args.output_dir)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test"):
        # paddlenlp 3.0.0b4's predict() asks for the loss alone when compute_metrics is None, so a run without a
        # metric (QA prediction without a dev set) got predictions=None. A metric that is never called (the test
        # data has no labels) restores them.
        if self.compute_metrics is not None:
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        self.compute_metrics = lambda _: {}
        try:
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self.compute_metrics = None


@dataclass
class Run:
    model_args: "ModelArguments"
    data_args: "DataArguments"
    training_args: TrainingArguments
    task: TaskSpec
    resume_checkpoint: Optional[str]
    extra: tuple = ()  # instances of the script's extra argument dataclasses


@contextlib.contextmanager
def start_run(family: Family, description: str, argv=None, extra_classes: tuple = ()) -> Iterator[Run]:
    """The opening every run_*.py shares: arguments, logging, device, task, checkpoint, output-dir safety; the run
    holds --output_dir's lock until it ends (a second run on it refuses), as in `with start_run(...) as run:`."""
    (model_args, data_args, *extra, training_args), first = parse_arguments(
        (ModelArguments, DataArguments, *extra_classes, TrainingArguments), family, description, user_argv(argv)
    )
    setup_logging(training_args.should_log)
    if not first.actions_given:
        logger.info(
            "no --do_* given: training and evaluating %s on %s into %s",
            model_args.model_name_or_path,
            data_args.task_name,
            training_args.output_dir,
        )
    check_device(training_args.device)
    task = get_task(data_args.task_name, family, data_args.label_list)
    # the process that writes output_dir holds its lock (the other ranks of a distributed run write nothing there)
    with output_lock(training_args.output_dir if training_args.should_save else None, "--output_dir"):
        resume_checkpoint = resolve_resume_checkpoint(training_args)
        check_output_dir(training_args, resume_checkpoint, task.submission_file)
        yield Run(model_args, data_args, training_args, task, resume_checkpoint, tuple(extra))


def needed_splits(training_args) -> List[str]:
    """The data splits this run reads: training evaluates on dev unless --evaluation_strategy no."""
    splits = []
    if training_args.do_train:
        splits.append("train")
    evaluates_while_training = training_args.do_train and str(training_args.evaluation_strategy) not in (
        "no",
        "IntervalStrategy.NO",
    )
    if training_args.do_eval or evaluates_while_training:
        splits.append("dev")
    if training_args.do_predict:
        splits.append("test")
    return splits


def load_model_and_tokenizer(run: Run, model_class):
    """Seed, then the tokenizer and the model with a head sized for the task."""
    set_seed(run.training_args.seed)
    name = run.model_args.model_name_or_path
    tokenizer = load_tokenizer(name)
    model = load_task_model(model_class, name, run.task, run.data_args.max_seq_length, run.model_args.dropout)
    return model, tokenizer


def build_trainer(run: Run, model, tokenizer, splits: dict, data_collator, compute_metrics) -> "SuiteTrainer":
    """The Trainer over the encoded train and dev splits (each split is (examples, encoded))."""
    patience = run.model_args.early_stopping_patience
    return SuiteTrainer(
        model=model,
        args=run.training_args,
        train_dataset=splits["train"][1].dataset if "train" in splits else None,
        eval_dataset=splits["dev"][1].dataset if "dev" in splits else None,
        tokenizer=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)] if patience else [],
        group_by_length=run.data_args.group_by_length,
        training_loss=run.task.family.training_loss,
    )


def export_if_asked(run: Run, trainer, tokenizer) -> None:
    if run.training_args.do_export and run.training_args.should_save:
        export_dir = os.path.join(run.training_args.output_dir, "export")
        export_static_model(trainer.model, tokenizer, export_dir, task_file(run.task, run.data_args.max_seq_length))


def train_and_save(trainer, resume_checkpoint: Optional[str], train_samples: int) -> dict:
    """Train (or resume), keep the best model at the top of output_dir and write train_results.json."""
    with paddle.utils.unique_name.guard():  # optimizer accumulator names as in a fresh process, see load_task_model
        result = trainer.train(resume_from_checkpoint=resume_checkpoint)
    trainer.save_model()  # the best model, because load_best_model_at_end is on by default
    metrics = {**result.metrics, "train_samples": train_samples, "global_step": trainer.state.global_step}
    if trainer.state.best_model_checkpoint:
        metrics["best_checkpoint"] = os.path.basename(trainer.state.best_model_checkpoint)
        metrics["best_metric"] = trainer.state.best_metric
    trainer.save_state()
    if trainer.args.should_save:
        write_json_atomic(os.path.join(trainer.args.output_dir, "train_results.json"), metrics)
    return metrics


def train_if_asked(run: Run, trainer, splits: dict) -> None:
    if run.training_args.do_train:
        train_and_save(trainer, run.resume_checkpoint, len(splits["train"][0]))


def evaluate_if_asked(run: Run, trainer, splits: dict) -> None:
    """eval_results.json: the task's metrics, eval_samples (examples), and how many were truncated (or, for QA,
    how many windows the questions made)."""
    if not run.training_args.do_eval:
        return
    examples, encoded = splits["dev"]
    extra = {"eval_samples": len(examples), **run.task.family.eval_extras(encoded)}
    evaluate_and_save(trainer, encoded.dataset, run.task.metric_names, extra)


def predict_if_asked(run: Run, trainer, splits: dict, write: Callable) -> None:
    """Predict the test split; write(output_dir, examples, encoded, outputs) writes the task's prediction files
    (once, from the main process)."""
    if not run.training_args.do_predict:
        return
    examples, encoded = splits["test"]
    outputs = predict_outputs(trainer, encoded.dataset)
    if run.training_args.should_save:
        write(run.training_args.output_dir, examples, encoded, outputs)


def evaluate_and_save(trainer, dataset, metric_names: Sequence[str], extra: dict) -> dict:
    """Evaluate on dataset and write eval_results.json with the task's metric names unprefixed."""
    metrics = trainer.evaluate(eval_dataset=dataset)
    renamed = {
        name[len("eval_") :] if name[len("eval_") :] in metric_names else name: value for name, value in metrics.items()
    }
    results = {**renamed, **extra}
    logger.info("eval results: %s", json.dumps(results, ensure_ascii=False))
    if trainer.args.should_save:
        write_json_atomic(os.path.join(trainer.args.output_dir, "eval_results.json"), results)
    return results


def predict_outputs(trainer, dataset) -> List[np.ndarray]:
    """Every model output (logits; QA: start and end logits) for each example of dataset, in order."""
    predictions = trainer.predict(dataset).predictions
    arrays = predictions if isinstance(predictions, (tuple, list)) else [predictions]
    return [np.asarray(array)[: len(dataset)] for array in arrays]
