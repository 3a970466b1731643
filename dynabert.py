"""DynaBERT width and depth pruning and distillation: head and neuron importance from the task loss, reordering every
layer most important first, masks that train the narrower networks together, DynaBERT's rule for the layers a depth
keeps, slicing a model to a width and a depth, and the distillation that trains a student on its teacher's outputs
(the loss chosen by the family's kind of outputs, optionally with TinyBERT's hidden-state loss).

Imports model_io.py, predictors.py (to measure a width on held-out examples), runtime.py and utils.py.
"""

import dataclasses
import functools
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


def model_encoder(model):
    """The encoder pruning works on: a paddle.nn.TransformerEncoder of TransformerEncoderLayer (ERNIE, BERT)."""
    base = getattr(model, model.base_model_prefix, None)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if not layers or not all(isinstance(layer, paddle.nn.TransformerEncoderLayer) for layer in layers):
        raise UserError(
            f"pruning needs an encoder of paddle.nn.TransformerEncoderLayer; {type(model).__name__} has none"
        )
    return encoder


def encoder_layers(model) -> list:
    """The encoder layers width pruning works on (those the model runs now)."""
    return list(model_encoder(model).layers)


def kept_layers(depth: float, total: int) -> List[int]:
    """The layers DynaBERT keeps at a depth (its rule): the i-th kept layer is floor(i / depth), for i below
    round(depth x total), so the dropped layers are evenly spaced: 12 layers at 1/2 keep 0, 2, ..., 10; at 3/4 every
    fourth (3, 7, 11) is dropped; 6 at 2/3 keep 0, 1, 3, 4."""
    count = max(1, round(depth * total))
    return [math.floor(i / depth + 1e-9) for i in range(count)]


class LayerDropping:
    """Runs a model at a depth by giving its encoder only the kept layers (their parameters shared, not copied);
    set_depth(1.0) gives every layer back (state_dict() then names them all again)."""

    def __init__(self, model):
        self.encoder = model_encoder(model)
        self.layers = list(self.encoder.layers)

    def set_depth(self, depth: float) -> None:
        kept = kept_layers(depth, len(self.layers)) if depth < 1 else range(len(self.layers))
        self.encoder.layers = paddle.nn.LayerList([self.layers[i] for i in kept])
        self.encoder.num_layers = len(self.encoder.layers)


def slice_to_depth(model, depth: float):
    """Keep only the layers DynaBERT's rule keeps at this depth (the model's config says how many remain)."""
    if depth < 1:
        LayerDropping(model).set_depth(depth)
        model.config.num_hidden_layers = len(model_encoder(model).layers)
    return model


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
    if width >= 1:
        return model
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


class LayerOutputs:
    """Each running encoder layer's output on the model's last forward (hooks: the encoder's pre-hook starts a new
    list, each layer's post-hook adds to it; remove() takes them off)."""

    def __init__(self, model):
        self.outputs = []
        self.handles = [model_encoder(model).register_forward_pre_hook(self._restart)]
        self.handles += [layer.register_forward_post_hook(self._record) for layer in encoder_layers(model)]

    def _restart(self, encoder, inputs):
        self.outputs = []

    def _record(self, layer, inputs, output):
        self.outputs.append(output)

    def take(self) -> list:
        outputs, self.outputs = self.outputs, []
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> List[int]:
    """TinyBERT's uniform mapping: student layer j (of m) learns teacher layer (j + 1) x n / m - 1 (of n), so the
    last learns the last."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


class HiddenStateDistillation(paddle.nn.Layer):
    """TinyBERT's hidden-state loss: the mean squared error, over real tokens, between each student layer's output
    (through a trained linear map when the student is narrower) and the teacher layer uniform_layer_map gives it.
    Not implemented: TinyBERT's attention-matrix loss and its embedding-layer loss. A student cut from the teacher
    starts from the teacher's layers DynaBERT keeps (0, 2, ...) but is trained toward the uniform map (1, 3, ...): its
    last layer must match the teacher's last, whose output the head reads."""

    def __init__(self, student, teacher, weight: float):
        super().__init__()
        self.weight = weight
        self.student_outputs, self.teacher_outputs = LayerOutputs(student), LayerOutputs(teacher)
        student_width = encoder_layers(student)[0].linear2.weight.shape[1]
        teacher_width = encoder_layers(teacher)[0].linear2.weight.shape[1]
        self.projection = paddle.nn.Linear(student_width, teacher_width) if student_width != teacher_width else None
        self.layer_map = uniform_layer_map(len(encoder_layers(student)), len(encoder_layers(teacher)))

    def forward(self, teacher_states: list, real):
        """The weighted loss of the student's last forward against teacher_states (the teacher's, same batch)."""
        student_states = self.student_outputs.take()
        real = real.reshape([-1, real.shape[-1]])  # multiple choice: a row per choice, as the encoder ran them
        tokens = real.sum() * teacher_states[0].shape[-1]
        loss = 0.0
        for state, target in zip(student_states, (teacher_states[i] for i in self.layer_map)):
            mapped = self.projection(state) if self.projection is not None else state
            loss = loss + (((mapped - target) ** 2).sum(axis=-1) * real).sum() / tokens
        return self.weight * loss / len(student_states)

    def remove(self) -> None:
        self.student_outputs.remove()
        self.teacher_outputs.remove()


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


def shape_points(
    student, shape: Callable[[], None], task: TaskSpec, dev_examples, dev_encoded, window_args, batch_size: int
) -> float:
    """The task's metric in points of student set to a shape (shape() sets its width and depth)."""
    shape()
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
    hidden: Optional[HiddenStateDistillation] = None,
) -> None:
    """Train student to match teacher's outputs (distillation_loss, plus hidden's layer loss when given) on the
    training features. Each batch runs once per variant (DynaBERT: one per shape, set by the variant), gradients
    summed, then one optimizer step."""

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
    trained = list(student.named_parameters()) + (list(hidden.named_parameters()) if hidden is not None else [])
    no_decay = {p.name for n, p in trained if "bias" in n or "norm" in n}
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler,
        parameters=[p for _, p in trained],
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
            teacher_states = hidden.teacher_outputs.take() if hidden is not None else None
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
                if hidden is not None:
                    loss = loss + hidden(
                        teacher_states, (batch["input_ids"] != tokenizer.pad_token_id).astype("float32")
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


Shape = Tuple[float, float]  # (width, depth)


def dynabert_pruning(
    parent,
    tokenizer,
    task: TaskSpec,
    shapes: List[Shape],
    train_encoded,
    selection_examples,
    selection_encoded,
    window_args,
    settings: "DistillationSettings",
) -> Dict[Shape, object]:
    """DynaBERT: rank heads and neurons by importance, reorder them, then train the narrower and shallower networks by
    distillation from the parent, every (width, depth) on every batch; keep each shape's best state on the selection
    examples (held out from training, never the dev set) and cut it to its layers and width."""
    import copy

    features = list(train_encoded.dataset)
    student = copy.deepcopy(parent)
    masks, depths = WidthMasks(student), LayerDropping(student)
    importance_batches = list(
        training_batches(
            features, family_collator(task, tokenizer), settings.per_device_train_batch_size, shuffle=False
        )
    )
    importance = width_importance(
        student, masks, importance_batches[: settings.importance_batches], task.family.training_loss
    )
    reorder_by_importance(masks, *importance)
    best = {shape: (-float("inf"), None) for shape in shapes}

    def set_shape(shape: Shape) -> None:
        masks.set_width(shape[0])
        depths.set_depth(shape[1])

    def keep_best():
        for shape in shapes:
            points = shape_points(
                student,
                functools.partial(set_shape, shape),
                task,
                selection_examples,
                selection_encoded,
                window_args,
                settings.per_device_eval_batch_size,
            )
            logger.info("DynaBERT width %g depth %g: held-out selection %s %.4f points", *shape, task.metric, points)
            if points > best[shape][0]:
                depths.set_depth(1.0)  # every layer's parameters in the snapshot
                best[shape] = (points, {k: v.numpy().copy() for k, v in student.state_dict().items()})

    variants = [functools.partial(set_shape, shape) for shape in shapes]
    distillation_training(
        student, parent, task, features, tokenizer, settings, variants, keep_best, "DynaBERT distillation"
    )
    masks.remove()
    depths.set_depth(1.0)
    pruned = {}
    for width, depth in shapes:
        model = copy.deepcopy(student)
        model.set_state_dict(best[(width, depth)][1])
        pruned[(width, depth)] = slice_to_width(slice_to_depth(model, depth), width)
    if any(depth < 1 for _, depth in shapes):
        logger.info(
            "DynaBERT depth keeps layers %s of %d",
            "; ".join(f"{d:g}: {kept_layers(d, len(depths.layers))}" for d in sorted({d for _, d in shapes})),
            len(depths.layers),
        )
    return pruned
