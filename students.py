"""Distillation into a smaller student (ERNIE 3.0 Tiny's and TinyBERT's recipe): the student is a smaller pretrained
ERNIE 3.0 (a PaddleNLP name such as ernie-3.0-nano-zh, or a folder) given the task's head, or layers and width cut
from the fine-tuned teacher (DynaBERT's layer rule, its most important heads and neurons); it is trained on the
teacher's predictions (soft cross-entropy) and on its layers' outputs (TinyBERT's hidden-state loss), and the state
that does best on the held-out selection examples is kept.

Imports dynabert.py, model_io.py, runtime.py and utils.py.
"""

import copy
import math
from dataclasses import dataclass
from typing import Optional

from dynabert import (
    DistillationSettings,
    HiddenStateDistillation,
    WidthMasks,
    distillation_training,
    encoder_layers,
    reorder_by_importance,
    shape_points,
    slice_to_depth,
    slice_to_width,
    training_batches,
    width_importance,
)
from model_io import load_task_model
from runtime import UserError, logger
from utils import TaskSpec, family_collator


@dataclass(frozen=True)
class StudentSpec:
    """Which student (compress_*.py's --student, --student_layers, --student_width)."""

    name: Optional[str]  # a PaddleNLP name or a folder; None: cut from the teacher
    layers: int  # cut from the teacher: how many layers (0: half the teacher's)
    width: float  # cut from the teacher: the share of heads and neurons kept

    def describe(self, teacher_layers: int) -> str:
        if self.name:
            return self.name
        return f"teacher's layers ({self.layers_of(teacher_layers)} of {teacher_layers}), width {self.width:g}"

    def layers_of(self, teacher_layers: int) -> int:
        layers = self.layers or max(1, teacher_layers // 2)
        if not 1 <= layers <= teacher_layers:
            raise UserError(f"--student_layers must be between 1 and the teacher's {teacher_layers} layers")
        return layers


def cut_from_teacher(teacher, spec: StudentSpec, task: TaskSpec, features, tokenizer, settings: DistillationSettings):
    """A copy of the teacher with DynaBERT's kept layers and, narrower, its most important heads and neurons."""
    student = copy.deepcopy(teacher)
    total = len(encoder_layers(student))
    if spec.width < 1:
        masks = WidthMasks(student)
        batches = training_batches(
            features, family_collator(task, tokenizer), settings.per_device_train_batch_size, shuffle=False
        )
        batches = [batch for _, batch in zip(range(settings.importance_batches), batches)]
        reorder_by_importance(masks, *width_importance(student, masks, batches, task.family.training_loss))
        masks.remove()
    return slice_to_width(slice_to_depth(student, spec.layers_of(total) / total), spec.width)


def named_student(spec: StudentSpec, model_class, teacher, task: TaskSpec, max_seq_length: int):
    """The pretrained student with a new head for the task; it must share the teacher's vocabulary."""
    student = load_task_model(model_class, spec.name, task, max_seq_length)
    student_vocabulary = student.config.vocab_size
    if student_vocabulary != teacher.config.vocab_size:
        raise UserError(
            f"--student {spec.name} has a {student_vocabulary}-token vocabulary, the teacher "
            f"{teacher.config.vocab_size}: distillation feeds both the same token ids"
        )
    return student


def distilled_student(
    teacher,
    spec: StudentSpec,
    model_class,
    task: TaskSpec,
    tokenizer,
    train_encoded,
    selection,
    window_args,
    settings: DistillationSettings,
    max_seq_length: int,
    hidden_weight: float,
):
    """The student trained on the teacher (predictions and, with hidden_weight > 0, layer outputs), at its best
    state on the held-out selection examples."""
    features = list(train_encoded.dataset)
    if spec.name:
        student = named_student(spec, model_class, teacher, task, max_seq_length)
    else:
        student = cut_from_teacher(teacher, spec, task, features, tokenizer, settings)
    hidden = HiddenStateDistillation(student, teacher, hidden_weight) if hidden_weight > 0 else None
    best = [-math.inf, None]

    def keep_best():
        points = shape_points(student, lambda: None, task, *selection, window_args, settings.per_device_eval_batch_size)
        logger.info("student: held-out selection %s %.4f points", task.metric, points)
        if points > best[0]:
            best[:] = [points, {k: v.numpy().copy() for k, v in student.state_dict().items()}]

    try:
        distillation_training(
            student, teacher, task, features, tokenizer, settings, [lambda: None], keep_best, "student distillation",
            hidden,
        )  # fmt: skip
    finally:
        if hidden is not None:
            hidden.remove()
    student.set_state_dict(best[1])
    return student
