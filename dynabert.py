"""DynaBERT width pruning and distillation: head and neuron importance from the task loss, reordering every layer
most important first, masks that train the narrower networks together, slicing a model to a width, and the
distillation that trains a student on its teacher's outputs (the loss chosen by the family's kind of outputs).

Imports model_io.py, predictors.py (to measure a width on held-out examples), runtime.py and utils.py.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from model_io import each_row_scored
from predictors import DygraphPredictor, run_predictor
from runtime import UserError, logger
from utils import TaskSpec, deployed_metrics, family_collator, masked_choice_logits, metric_points


@dataclass(frozen=True)
class DistillationSettings:
    """How distillation trains (compress_*.py's options of the same names)."""

    learning_rate: float
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    importance_batches: int
    logging_steps: int
    seed: int

    @classmethod
    def of(cls, arguments) -> "DistillationSettings":
        return cls(**{item.name: getattr(arguments, item.name) for item in dataclasses.fields(cls)})


def encoder_layers(model) -> list:
    """The encoder layers width pruning works on: paddle.nn.TransformerEncoderLayer (ERNIE, BERT, RoBERTa)."""
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layers", None)
    if not layers or not all(isinstance(layer, paddle.nn.TransformerEncoderLayer) for layer in layers):
        raise UserError(
            f"width pruning needs an encoder of paddle.nn.TransformerEncoderLayer; {type(model).__name__} has none"
        )
    return list(layers)


def kept_units(width: float, total: int) -> int:
    return max(1, int(width * total))


class WidthMasks:
    """Masks over each layer's attention heads and feed-forward neurons, applied by forward pre-hooks on the
    layers that consume them (out_proj and linear2): a masked head or neuron contributes nothing, exactly as
    if it were cut out. With gradients on, the masks' gradients measure each unit's importance."""

    def __init__(self, model):
        self.layers = encoder_layers(model)
        attention = self.layers[0].self_attn
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.intermediate = self.layers[0].linear1.weight.shape[1]
        self.set_width(1.0)
        self.handles = []
        for index, layer in enumerate(self.layers):
            self.handles.append(
                layer.self_attn.out_proj.register_forward_pre_hook(self._masking_hook(index, heads=True))
            )
            self.handles.append(layer.linear2.register_forward_pre_hook(self._masking_hook(index, heads=False)))

    def _masking_hook(self, index: int, heads: bool):
        def hook(layer, inputs):
            mask = paddle.repeat_interleave(self.head_mask[index], self.head_dim) if heads else self.neuron_mask[index]
            return (inputs[0] * mask,) + tuple(inputs[1:])

        return hook

    def set_width(self, width: float) -> None:
        """Keep the first width share of heads and neurons in every layer (after reordering, the most important)."""
        heads, neurons = kept_units(width, self.num_heads), kept_units(width, self.intermediate)
        self.head_mask = paddle.to_tensor([[1.0] * heads + [0.0] * (self.num_heads - heads)] * len(self.layers))
        self.neuron_mask = paddle.to_tensor(
            [[1.0] * neurons + [0.0] * (self.intermediate - neurons)] * len(self.layers)
        )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def width_importance(
    model, masks: WidthMasks, batches, training_loss: Optional[Callable] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Head and neuron importance: the summed |gradient of the task loss| with respect to each unit's mask
    (DynaBERT; Michel et al. 2019 for heads), over batches that carry labels; training_loss is the family's
    (model, batch) -> (loss, logits) where the model's own loss does not fit (utils.Family.training_loss)."""
    masks.set_width(1.0)
    masks.head_mask.stop_gradient = False
    masks.neuron_mask.stop_gradient = False
    head_importance = np.zeros([len(masks.layers), masks.num_heads])
    neuron_importance = np.zeros([len(masks.layers), masks.intermediate])
    model.eval()  # no dropout, gradients still flow
    for batch in batches:
        loss = training_loss(model, batch)[0] if training_loss else model(**batch)[0]
        loss.backward()
        head_importance += np.abs(masks.head_mask.grad.numpy())
        neuron_importance += np.abs(masks.neuron_mask.grad.numpy())
        masks.head_mask.clear_grad()
        masks.neuron_mask.clear_grad()
        model.clear_gradients()
    masks.set_width(1.0)
    return head_importance, neuron_importance


def reorder_by_importance(masks: WidthMasks, head_importance: np.ndarray, neuron_importance: np.ndarray) -> None:
    """Permute every layer's heads and neurons, most important first; the model computes the same function."""
    dim = masks.head_dim
    for layer, heads, neurons in zip(masks.layers, head_importance, neuron_importance):
        head_order = np.argsort(-heads, kind="stable")
        columns = (head_order[:, None] * dim + np.arange(dim)).reshape(-1)
        attention = layer.self_attn
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight.set_value(projection.weight.numpy()[:, columns])
            projection.bias.set_value(projection.bias.numpy()[columns])
        attention.out_proj.weight.set_value(attention.out_proj.weight.numpy()[columns, :])
        neuron_order = np.argsort(-neurons, kind="stable")
        layer.linear1.weight.set_value(layer.linear1.weight.numpy()[:, neuron_order])
        layer.linear1.bias.set_value(layer.linear1.bias.numpy()[neuron_order])
        layer.linear2.weight.set_value(layer.linear2.weight.numpy()[neuron_order, :])


def sliced_linear(linear, inputs: Optional[int] = None, outputs: Optional[int] = None):
    """A new Linear holding the first inputs rows and outputs columns of linear's weight."""
    weight = linear.weight.numpy()
    inputs, outputs = inputs or weight.shape[0], outputs or weight.shape[1]
    sliced = paddle.nn.Linear(inputs, outputs)
    sliced.weight.set_value(weight[:inputs, :outputs])
    sliced.bias.set_value(linear.bias.numpy()[:outputs])
    return sliced


def slice_to_width(model, width: float):
    """Cut every layer down to its first width share of heads and neurons: the pruned model really is smaller."""
    for layer in encoder_layers(model):
        attention = layer.self_attn
        heads = kept_units(width, attention.num_heads)
        kept = heads * attention.head_dim
        attention.q_proj = sliced_linear(attention.q_proj, outputs=kept)
        attention.k_proj = sliced_linear(attention.k_proj, outputs=kept)
        attention.v_proj = sliced_linear(attention.v_proj, outputs=kept)
        attention.out_proj = sliced_linear(attention.out_proj, inputs=kept)
        attention.num_heads = heads
        neurons = kept_units(width, layer.linear1.weight.shape[1])
        layer.linear1 = sliced_linear(layer.linear1, outputs=neurons)
        layer.linear2 = sliced_linear(layer.linear2, inputs=neurons)
    return model


def parameter_count(model) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))


def soft_cross_entropy(student, teacher, axis: int = -1):
    return -(
        paddle.nn.functional.softmax(teacher, axis=axis) * paddle.nn.functional.log_softmax(student, axis=axis)
    ).sum(axis=axis)


def sequence_distillation(student_outputs, teacher_outputs, real, batch):
    """Over the classes of each sequence (classification)."""
    return soft_cross_entropy(student_outputs[0], teacher_outputs[0]).mean()


def choice_distillation(student_outputs, teacher_outputs, real, batch):
    """Over the real choices of each question (multiple choice: padded choices masked out of both softmaxes)."""
    mask = batch["choice_mask"]
    student, teacher = (masked_choice_logits(o[0], mask) for o in (student_outputs, teacher_outputs))
    return soft_cross_entropy(student, teacher).mean()


def token_distillation(student_outputs, teacher_outputs, real, batch):
    """Over the classes of each real token (NER)."""
    return (soft_cross_entropy(student_outputs[0], teacher_outputs[0]) * real).sum() / real.sum()


def span_distillation(student_outputs, teacher_outputs, real, batch):
    """Over the positions of the start and of the end (QA), padding excluded."""
    padding = (1.0 - real) * -1e4
    losses = [soft_cross_entropy(s + padding, t + padding).mean() for s, t in zip(student_outputs, teacher_outputs)]
    return sum(losses) / len(losses)


# by the family's kind of outputs (utils.Family.outputs)
DISTILLATION_LOSSES = {
    "sequence": sequence_distillation,
    "choice": choice_distillation,
    "token": token_distillation,
    "span": span_distillation,
}


def distillation_loss(task: TaskSpec, student_outputs, teacher_outputs, batch: dict, pad_token_id: int):
    """Soft cross-entropy from the teacher's distribution (ERNIE-Tiny's and TinyBERT's prediction-layer loss)."""
    real = (batch["input_ids"] != pad_token_id).astype("float32")
    return DISTILLATION_LOSSES[task.family.outputs](student_outputs, teacher_outputs, real, batch)


def model_outputs(model, batch: dict) -> list:
    outputs = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def training_batches(features: Sequence[dict], collator, batch_size: int, shuffle: bool, seed: int = 0):
    """Collated batches of features (labels included), shuffled with a seed or in order."""
    order = list(range(len(features)))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collator([features[i] for i in order[start : start + batch_size]])


def width_points(
    student, masks: WidthMasks, width: float, task: TaskSpec, dev_examples, dev_encoded, window_args, batch_size: int
) -> float:
    masks.set_width(width)
    with each_row_scored(student):  # the rows of dev_encoded.sequences, as the exported program scores them
        result = run_predictor(
            DygraphPredictor(student), list(dev_encoded.sequences), batch_size, per_token=task.per_token_outputs
        )
    return metric_points(
        task, deployed_metrics(task, dev_examples, dev_encoded, result.outputs, window_args)[task.metric]
    )


def distillation_training(
    student,
    teacher,
    task: TaskSpec,
    features: Sequence[dict],
    tokenizer,
    settings: "DistillationSettings",
    variants: Sequence[Callable[[], None]],
    on_epoch_end: Callable[[], None],
    description: str,
) -> None:
    """Train student to match teacher's outputs (distillation_loss) on the training features. Each batch runs
    once per variant (DynaBERT: one per width, set by the variant), gradients summed, then one optimizer step."""

    from paddlenlp.transformers import LinearDecayWithWarmup
    from tqdm import tqdm

    collator = family_collator(task, tokenizer)
    batches_per_epoch = math.ceil(len(features) / settings.per_device_train_batch_size)
    total_steps = (
        settings.max_steps
        if settings.max_steps > 0
        else max(1, math.ceil(settings.num_train_epochs * batches_per_epoch))
    )
    scheduler = LinearDecayWithWarmup(settings.learning_rate, total_steps, 0.1)
    no_decay = {p.name for n, p in student.named_parameters() if "bias" in n or "norm" in n}
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler,
        parameters=student.parameters(),
        weight_decay=0.01,
        apply_decay_param_fun=lambda name: name not in no_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    teacher.eval()
    step, epoch = 0, 0
    progress = tqdm(total=total_steps, desc=description)
    while step < total_steps:
        for batch in training_batches(
            features, collator, settings.per_device_train_batch_size, shuffle=True, seed=settings.seed + epoch
        ):
            with paddle.no_grad():
                teacher_outputs = model_outputs(teacher, batch)
            student.train()
            loss_sum = 0.0
            for prepare in variants:
                prepare()
                loss = distillation_loss(
                    task,
                    model_outputs(student, batch),
                    teacher_outputs,
                    batch,
                    tokenizer.pad_token_id,
                )
                loss.backward()
                loss_sum += float(loss)
            optimizer.step()
            scheduler.step()
            optimizer.clear_grad()
            step += 1
            progress.update(1)
            if step % settings.logging_steps == 0:
                logger.info(
                    "%s step %d/%d: distillation loss %.4f, lr %.2e",
                    description,
                    step,
                    total_steps,
                    loss_sum / len(variants),
                    scheduler.get_lr(),
                )
            if step >= total_steps:
                break
        epoch += 1
        on_epoch_end()
    progress.close()


def dynabert_width_pruning(
    parent,
    tokenizer,
    task: TaskSpec,
    widths: List[float],
    train_encoded,
    selection_examples,
    selection_encoded,
    window_args,
    settings: "DistillationSettings",
) -> Dict[float, object]:
    """DynaBERT's width stage: rank heads and neurons by importance, reorder them, then train the narrower
    networks by distillation from the parent, every width on every batch; keep each width's best state on the
    selection examples (held out from training, never the dev set) and cut it to size."""
    import copy

    features = list(train_encoded.dataset)
    student = copy.deepcopy(parent)
    masks = WidthMasks(student)
    importance_batches = list(
        training_batches(
            features, family_collator(task, tokenizer), settings.per_device_train_batch_size, shuffle=False
        )
    )
    importance = width_importance(
        student, masks, importance_batches[: settings.importance_batches], task.family.training_loss
    )
    reorder_by_importance(masks, *importance)
    best = {width: (-float("inf"), None) for width in widths}

    def keep_best():
        for width in widths:
            points = width_points(
                student,
                masks,
                width,
                task,
                selection_examples,
                selection_encoded,
                window_args,
                settings.per_device_eval_batch_size,
            )
            logger.info("DynaBERT width %g: held-out selection %s %.4f points", width, task.metric, points)
            if points > best[width][0]:
                best[width] = (points, {k: v.numpy().copy() for k, v in student.state_dict().items()})

    variants = [lambda width=width: masks.set_width(width) for width in widths]
    distillation_training(
        student, parent, task, features, tokenizer, settings, variants, keep_best, "DynaBERT distillation"
    )
    masks.remove()
    pruned = {}
    for width in widths:
        model = copy.deepcopy(student)
        model.set_state_dict(best[width][1])
        pruned[width] = slice_to_width(model, width)
    return pruned
