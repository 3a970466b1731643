"""Compression for compress_*.py: DynaBERT width pruning with distillation, int8 post-training quantization
over a grid of calibration settings, quantization-aware training, and the run that measures every candidate
and chooses the best within the accuracy budget. Strategies are one table (STRATEGIES) of steps; the help
text and the checks are generated from it.

Imports arguments.py, model_io.py, predictors.py and utils.py.
"""

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.trainer import set_seed

from arguments import (
    DataArguments,
    QAWindowArguments,
    check_device,
    default_output_dir,
    parse_plain_arguments,
    user_argv,
    with_task_name,
)
from model_io import (
    EXPORT_INPUT_NAMES,
    check_model_fits_task,
    export_input_spec,
    export_legacy_static_model,
    export_static_model,
    load_deployed_tokenizer,
    load_model_config,
    load_task_model,
    load_tokenizer,
    model_head_family,
    save_deployable,
    task_info,
)
from predictors import (
    BACKENDS,
    PRECISIONS,
    DygraphPredictor,
    OpenVinoPredictor,
    PredictorOptions,
    create_predictor,
    native_bfloat16,
    onnx_conversion,
    pad_features,
    run_predictor,
    warm_up_buckets,
)
from runtime import UserError, atomic_entries, logger, machine_details, read_json_file, setup_logging, write_json_atomic
from utils import (
    FAMILIES,
    TaskSpec,
    deployed_metrics,
    encode_examples,
    family_collator,
    get_task,
    load_encoded_split,
    load_examples,
    metric_points,
)


def keep_float_for_quantization(model) -> None:
    """paddlenlp 3.0.0b4's ERNIE and BERT forward read pooler.dense.weight.dtype to build the attention mask;
    paddle 3.0.0's QAT wraps a quantized Linear in a layer without .weight ("'MAOutputScaleLayer' object has
    no attribute 'weight'"), so the pooler's one dense layer stays float (skip_quant is QAT's own switch)."""
    pooler = getattr(getattr(model, model.base_model_prefix, None), "pooler", None)
    if pooler is not None and hasattr(pooler, "dense"):
        pooler.dense.skip_quant = True


PTQ_ALGORITHMS = ("hist", "mse", "avg", "abs_max", "KL", "emd")


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


def width_importance(model, masks: WidthMasks, batches) -> Tuple[np.ndarray, np.ndarray]:
    """Head and neuron importance: the summed |gradient of the task loss| with respect to each unit's mask
    (DynaBERT; Michel et al. 2019 for heads), over batches that carry labels."""
    masks.set_width(1.0)
    masks.head_mask.stop_gradient = False
    masks.neuron_mask.stop_gradient = False
    head_importance = np.zeros([len(masks.layers), masks.num_heads])
    neuron_importance = np.zeros([len(masks.layers), masks.intermediate])
    model.eval()  # no dropout, gradients still flow
    for batch in batches:
        loss = model(**batch)[0]
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


def distillation_loss(family: str, student_outputs, teacher_outputs, input_ids, pad_token_id: int):
    """Soft cross-entropy from the teacher's distribution: over classes (per sequence, or per real token for
    NER), or over positions for QA's start and end (padding excluded)."""
    real = (input_ids != pad_token_id).astype("float32")
    if family == "seq_cls":
        return soft_cross_entropy(student_outputs[0], teacher_outputs[0]).mean()
    if family == "token_cls":
        return (soft_cross_entropy(student_outputs[0], teacher_outputs[0]) * real).sum() / real.sum()
    padding = (1.0 - real) * -1e4
    losses = [soft_cross_entropy(s + padding, t + padding).mean() for s, t in zip(student_outputs, teacher_outputs)]
    return sum(losses) / len(losses)


def model_outputs(model, batch: dict) -> list:
    outputs = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def quantize_post_training(
    legacy_dir: str, output_dir: str, calibration: Sequence[dict], algo: str, batch_size: int, batch_nums: int
) -> None:
    """int8.pdmodel + int8.pdiparams: the transformer matmuls quantized (weights per channel, activations per
    tensor) from calibration batches; embeddings, layer norms and softmax stay fp32."""
    from paddle.static.quantization import PostTrainingQuantization

    def calibration_batches():
        for start in range(0, min(len(calibration), batch_size * batch_nums), batch_size):
            yield pad_features(calibration[start : start + batch_size])

    with paddle.pir_utils.OldIrGuard():
        paddle.enable_static()
        try:
            quantizer = PostTrainingQuantization(
                executor=paddle.static.Executor(paddle.CPUPlace()),
                model_dir=legacy_dir,
                model_filename="model.pdmodel",
                params_filename="model.pdiparams",
                data_loader=calibration_batches,
                batch_size=batch_size,
                batch_nums=batch_nums,
                algo=algo,
                hist_percent=0.9999,
                quantizable_op_type=["matmul", "matmul_v2"],
                is_full_quantize=False,
                weight_bits=8,
                activation_bits=8,
                weight_quantize_type="channel_wise_abs_max",
                onnx_format=True,
                optimize_model=False,
            )
            quantizer.quantize()
            quantizer.save_quantized_model(output_dir, model_filename="int8.pdmodel", params_filename="int8.pdiparams")
        finally:
            paddle.disable_static()


@dataclass
class CompressArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A fine-tuned output directory of run_*.py (the float parent); default output/<task>, where run_*.py writes."
        },
    )
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Upstream's name for the task: 'clue tnews', msra_ner, cmrc2018 (same as --task_name)."},
    )
    selection_samples: Optional[int] = field(
        default=None,
        metadata={
            "help": "Training examples held out (never trained on) to pick each DynaBERT width's best checkpoint, so the dev set that --max_metric_drop judges stays unseen; default 10%% of the training examples, at most 1000."
        },
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where candidates and compress_report.json go; default <model_name_or_path>/compress."},
    )
    strategy: str = field(default="dynabert+ptq", metadata={"help": "What to try (the strategies are listed below)."})
    width_mult_list: List[str] = field(
        default_factory=lambda: ["3/4"], metadata={"help": "Widths to prune to, as fractions (3/4) or decimals."}
    )
    algo_list: List[str] = field(
        default_factory=lambda: ["hist", "mse"],
        metadata={"help": "PTQ activation calibration: hist, mse, avg, abs_max, emd, KL (KL is very slow)."},
    )
    batch_size_list: List[int] = field(
        default_factory=lambda: [4, 8, 16], metadata={"help": "Calibration batch sizes."}
    )
    batch_num_list: List[int] = field(default_factory=lambda: [1], metadata={"help": "Calibration batch counts."})
    max_metric_drop: float = field(
        default=1.0,
        metadata={
            "help": "Largest drop below the float parent, in points of the task's main metric, that a candidate may have to be chosen."
        },
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "DynaBERT distillation learning rate."})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "DynaBERT distillation epochs over the training data."}
    )
    max_steps: int = field(default=-1, metadata={"help": "If > 0: distillation steps, overriding --num_train_epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Distillation batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation and latency batch size."})
    importance_batches: int = field(default=32, metadata={"help": "Training batches used to rank heads and neurons."})
    logging_steps: int = field(default=50, metadata={"help": "Log the distillation loss every N steps."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    device: str = field(default="cpu", metadata={"help": "cpu or gpu, for distillation."})
    num_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "CPU threads for evaluation and latency."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier compression output."})
    backends: List[str] = field(
        default_factory=lambda: ["paddle", "onnxruntime", "openvino"],
        metadata={
            "help": "Backends a candidate may be served with (deploying elsewhere: restrict them): paddle, onnxruntime, openvino."
        },
    )
    precisions: List[str] = field(
        default_factory=lambda: ["fp32", "bf16", "int8"],
        metadata={"help": "Precisions a candidate may run in: fp32, bf16 (CPUs with native bfloat16 only), int8."},
    )


COMPRESSION_HELP = """
Every candidate is measured on the dev set with the deployed predictor, and the best one within
--max_metric_drop points of the float parent is chosen. PTQ algorithms (--algo_list): hist (activation range
from a histogram's 99.99th percentile), mse (the range that minimises quantization mean squared error),
avg (mean of per-batch maxima), abs_max (the largest value seen), KL (the range minimising KL divergence;
very slow), emd. Calibration batches come from the training data, never from the dev set.

Writes into --output_dir (default <model_name_or_path>/compress): parent/ (the float parent, exported for
comparison), width_mult_0.75/ (the pruned float model), [width_mult_0.75/]<algo><batch size>_<batches>/ (each
PTQ candidate), [width_mult_0.75/]qat/ (the QAT model), and compress_report.json. Every candidate directory is
servable by infer.py.
"""


def parse_width(text: str) -> float:
    try:
        numerator, _, denominator = str(text).partition("/")
        width = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--width_mult_list: {text!r} is not a width such as 3/4 or 0.75") from None
    if not 0 < width < 1:
        raise UserError(f"--width_mult_list: {text!r} must be between 0 and 1")
    return width


def check_compress_arguments(args: CompressArguments) -> List[float]:
    if args.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {args.strategy!r}")
    unknown = [algo for algo in args.algo_list if algo not in PTQ_ALGORITHMS]
    if unknown:
        raise UserError(f"--algo_list: unknown algorithm {unknown[0]!r}; choose from {', '.join(PTQ_ALGORITHMS)}")
    if any(size < 1 for size in args.batch_size_list + args.batch_num_list):
        raise UserError("--batch_size_list and --batch_num_list take positive numbers")
    for option, given, known in (
        ("--backends", args.backends, BACKENDS),
        ("--precisions", args.precisions, PRECISIONS),
    ):
        unknown = [value for value in given if value not in known]
        if unknown:
            raise UserError(f"{option}: unknown {unknown[0]!r}; choose from {', '.join(known)}")
    return [parse_width(width) for width in args.width_mult_list]


def within_budget(parent: dict, candidate: dict, max_drop: float) -> bool:
    return parent["metric_points"] - candidate["metric_points"] <= max_drop + 1e-9


def choose_best(parent: dict, candidates: List[dict], max_drop: float) -> Optional[dict]:
    """The fastest candidate (dev-set sequences per second on this machine) among those at most max_drop points below
    the parent and faster than it; ties: the smaller, then the better metric. None when no candidate qualifies."""
    qualifying = [
        c
        for c in candidates
        if within_budget(parent, c, max_drop) and c["sequences_per_second"] > parent["sequences_per_second"]
    ]
    if not qualifying:
        return None
    return max(qualifying, key=lambda c: (c["sequences_per_second"], -c["size_bytes"], c["metric_points"]))


def choose_for_tensorrt(parent: dict, candidates: List[dict], max_drop: float) -> Optional[dict]:
    """The int8 candidate `infer.py --use_trt --precision int8` serves: TensorRT runs Paddle int8 programs with their
    own scales (not ONNX Runtime's or NNCF's int8), and its speed on a GPU is not what this CPU measured, so the best
    metric within max_drop wins (ties: the smaller). None when no Paddle int8 candidate qualifies."""
    qualifying = [
        c
        for c in candidates
        if c["backend"] == "paddle" and c["precision"] == "int8" and within_budget(parent, c, max_drop)
    ]
    return max(qualifying, key=lambda c: (c["metric_points"], -c["size_bytes"])) if qualifying else None


def measure_candidate(
    model_dir: str,
    task: TaskSpec,
    dev_examples,
    dev_encoded,
    window_args,
    args: CompressArguments,
    max_seq_length: int,
    backend: str = "paddle",
    precision: str = "fp32",
) -> dict:
    """A compressed (or parent) static model's dev metric through the predictor it is served with, the size of what
    that predictor loads, and its speed (after one batch of every length bucket, as infer.py --perf)."""
    options = PredictorOptions(
        backend=backend,
        precision=precision,
        num_threads=args.num_threads,
        batch_size=args.per_device_eval_batch_size,
        max_seq_length=max_seq_length,
    )
    features = list(dev_encoded.dataset)
    predictor = create_predictor(model_dir, options)
    warm_up_buckets(predictor, options.batch_size, max_seq_length)
    result = run_predictor(predictor, features, options.batch_size, per_token=task.per_token_outputs, warmup_batches=2)
    metrics = deployed_metrics(task, dev_examples, dev_encoded, result.outputs, window_args)
    return {
        "backend": backend,
        "precision": precision,
        "metrics": metrics,
        "metric_points": metric_points(task, metrics[task.metric]),
        "size_bytes": sum(os.path.getsize(path) for path in predictor.model_files),
        "latency_ms_p50": float(np.median(result.batch_seconds) * 1000.0),
        "sequences_per_second": len(features) / float(np.sum(result.batch_seconds)),
    }


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
    result = run_predictor(
        DygraphPredictor(student), list(dev_encoded.dataset), batch_size, per_token=task.per_token_outputs
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
    args: "CompressArguments",
    variants: Sequence[Callable[[], None]],
    on_epoch_end: Callable[[], None],
    description: str,
) -> None:
    """Train student to match teacher's outputs (distillation_loss) on the training features. Each batch runs
    once per variant (DynaBERT: one per width, set by the variant), gradients summed, then one optimizer step."""
    import math

    from paddlenlp.transformers import LinearDecayWithWarmup
    from tqdm import tqdm

    collator = family_collator(task.family, tokenizer)
    batches_per_epoch = math.ceil(len(features) / args.per_device_train_batch_size)
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * batches_per_epoch))
    scheduler = LinearDecayWithWarmup(args.learning_rate, total_steps, 0.1)
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
            features, collator, args.per_device_train_batch_size, shuffle=True, seed=args.seed + epoch
        ):
            with paddle.no_grad():
                teacher_outputs = model_outputs(teacher, batch)
            student.train()
            loss_sum = 0.0
            for prepare in variants:
                prepare()
                loss = distillation_loss(
                    task.family,
                    model_outputs(student, batch),
                    teacher_outputs,
                    batch["input_ids"],
                    tokenizer.pad_token_id,
                )
                loss.backward()
                loss_sum += float(loss)
            optimizer.step()
            scheduler.step()
            optimizer.clear_grad()
            step += 1
            progress.update(1)
            if step % args.logging_steps == 0:
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
    args: "CompressArguments",
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
            features, family_collator(task.family, tokenizer), args.per_device_train_batch_size, shuffle=False
        )
    )
    reorder_by_importance(masks, *width_importance(student, masks, importance_batches[: args.importance_batches]))
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
                args.per_device_eval_batch_size,
            )
            logger.info("DynaBERT width %g: held-out selection %s %.4f points", width, task.metric, points)
            if points > best[width][0]:
                best[width] = (points, {k: v.numpy().copy() for k, v in student.state_dict().items()})

    variants = [lambda width=width: masks.set_width(width) for width in widths]
    distillation_training(
        student, parent, task, features, tokenizer, args, variants, keep_best, "DynaBERT distillation"
    )
    masks.remove()
    pruned = {}
    for width in widths:
        model = copy.deepcopy(student)
        model.set_state_dict(best[width][1])
        pruned[width] = slice_to_width(model, width)
    return pruned


def quantization_aware_training(
    source_model, teacher, tokenizer, task: TaskSpec, train_encoded, target_dir: str, args: "CompressArguments"
) -> None:
    """Fake-quantize every Linear (weights per channel, activations by moving average), train by distillation
    from the float parent, and save int8.pdmodel + int8.pdiparams in the legacy format."""
    import copy

    from paddle.quantization import ImperativeQuantAware

    student = copy.deepcopy(source_model)
    keep_float_for_quantization(student)
    quantizer = ImperativeQuantAware(
        weight_quantize_type="channel_wise_abs_max",
        activation_quantize_type="moving_average_abs_max",
        quantizable_layer_type=["Linear"],
        onnx_format=True,
    )
    quantizer.quantize(student)
    distillation_training(
        student,
        teacher,
        task,
        list(train_encoded.dataset),
        tokenizer,
        args,
        [lambda: None],
        lambda: None,
        "QAT distillation",
    )
    student.eval()
    with paddle.pir_utils.OldIrGuard():
        quantizer.save_quantized_model(student, os.path.join(target_dir, "int8"), input_spec=export_input_spec())


def quantization_grid(
    source_model,
    source_dir: str,
    relative_prefix: str,
    staging: str,
    calibration,
    tokenizer,
    info: dict,
    args: CompressArguments,
) -> List[Tuple[str, dict]]:
    """Every algorithm x batch size x batch count as an int8 candidate of one float model: (relative path, extras)."""
    candidates = []
    with tempfile.TemporaryDirectory() as legacy_dir:
        export_legacy_static_model(source_model, legacy_dir)
        for algo in args.algo_list:
            for batch_size in args.batch_size_list:
                for batch_nums in args.batch_num_list:
                    if batch_size * batch_nums > len(calibration):
                        logger.warning(
                            "skipping %s%d_%d: the calibration set has only %d examples",
                            algo,
                            batch_size,
                            batch_nums,
                            len(calibration),
                        )
                        continue
                    relative = os.path.join(relative_prefix, f"{algo}{batch_size}_{batch_nums}")
                    target = os.path.join(staging, relative)
                    logger.info("post-training quantization %s", relative)
                    quantize_post_training(legacy_dir, target, calibration, algo, batch_size, batch_nums)
                    save_deployable(target, tokenizer, info)
                    candidates.append(
                        (
                            relative,
                            {
                                "kind": "int8",
                                "source": source_dir,
                                "algo": algo,
                                "calibration_batch_size": batch_size,
                                "calibration_batches": batch_nums,
                            },
                        )
                    )
    return candidates


def compression_table(report: dict) -> str:
    rows = [
        (
            "candidate",
            "backend",
            "precision",
            report["task"]["metric"],
            "drop",
            "size MB",
            "seq/s",
            "speed-up",
            "params",
        )
    ]
    parent_speed = report["parent"]["sequences_per_second"]
    for entry in [report["parent"]] + report["candidates"]:
        rows.append(
            (
                entry["relative_path"],
                entry["backend"],
                entry["precision"],
                f"{entry['metric_points']:.2f}",
                f"{entry.get('drop_points', 0.0):.2f}",
                f"{entry['size_bytes'] / 2**20:.2f}",
                f"{entry['sequences_per_second']:.1f}",
                f"{entry['sequences_per_second'] / parent_speed:.2f}x",
                str(entry.get("parameters", "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


@dataclass
class Source:
    """A float model that quantization starts from: the parent, or a pruned width."""

    model: object
    directory: str  # where the float model is (for the report)
    prefix: str  # candidates made from it go under this relative path


@dataclass
class CompressionRun:
    """What every strategy step needs: arguments, task, data, the parent, and where candidates are staged."""

    args: CompressArguments
    task: TaskSpec
    window_args: object
    tokenizer: object
    parent: object
    info: dict
    widths: List[float]
    train_encoded: object
    selection: Tuple[list, object]  # (examples, encoded) held out from the training data
    dev_examples: list
    dev_encoded: object
    calibration: List[dict]
    staging: str
    output_dir: str

    float_models: List["Source"] = field(default_factory=list)  # the parent and any pruned widths

    def measured(self, relative: str, extras: dict, backend: str = "paddle", precision: str = "fp32") -> dict:
        """Measure a staged candidate as it will be served, and record that in its task.json (infer.py's defaults)."""
        directory = os.path.join(self.staging, relative)
        info = read_json_file(os.path.join(directory, "task.json"), "task.json")
        write_json_atomic(
            os.path.join(directory, "task.json"), {**info, "serving": {"backend": backend, "precision": precision}}
        )
        entry = measure_candidate(
            directory,
            self.task,
            self.dev_examples,
            self.dev_encoded,
            self.window_args,
            self.args,
            self.info["max_seq_length"],
            backend,
            precision,
        )
        return {"path": os.path.join(self.output_dir, relative), "relative_path": relative, **extras, **entry}

    def allows(self, backend: str, precision: str) -> bool:
        return backend in self.args.backends and precision in self.args.precisions


def prune_step(run: CompressionRun, sources: List[Source]) -> Tuple[List[dict], List[Source]]:
    """DynaBERT width pruning of the parent: one pruned float candidate per width, and the pruned models become
    the sources of any later quantization step."""
    pruned = dynabert_width_pruning(
        run.parent, run.tokenizer, run.task, run.widths, run.train_encoded, *run.selection, run.window_args, run.args
    )
    candidates, pruned_sources = [], []
    for width, model in pruned.items():
        relative = f"width_mult_{width:g}"
        export_static_model(model, run.tokenizer, os.path.join(run.staging, relative), run.info)
        candidates.append(
            run.measured(relative, {"kind": "pruned float", "width": width, "parameters": parameter_count(model)})
        )
        pruned_sources.append(Source(model, os.path.join(run.output_dir, relative), relative))
    run.float_models.extend(pruned_sources)
    return candidates, pruned_sources


def ptq_step(run: CompressionRun, sources: List[Source]) -> Tuple[List[dict], List[Source]]:
    """The post-training quantization grid over each source, served on Paddle's int8 kernels."""
    candidates = []
    if not run.allows("paddle", "int8"):
        return candidates, sources
    for source in sources:
        for relative, extras in quantization_grid(
            source.model,
            source.directory,
            source.prefix,
            run.staging,
            run.calibration,
            run.tokenizer,
            run.info,
            run.args,
        ):
            candidates.append(
                run.measured(relative, {**extras, "parameters": parameter_count(source.model)}, "paddle", "int8")
            )
    return candidates, sources


def qat_step(run: CompressionRun, sources: List[Source]) -> Tuple[List[dict], List[Source]]:
    """Quantization-aware training of each source, distilled from the float parent."""
    candidates = []
    if not run.allows("paddle", "int8"):
        return candidates, sources
    for source in sources:
        relative = os.path.join(source.prefix, "qat")
        target = os.path.join(run.staging, relative)
        quantization_aware_training(
            source.model, run.parent, run.tokenizer, run.task, run.train_encoded, target, run.args
        )
        save_deployable(target, run.tokenizer, run.info)
        candidates.append(
            run.measured(
                relative,
                {
                    "kind": "int8",
                    "source": source.directory,
                    "algo": "qat",
                    "parameters": parameter_count(source.model),
                },
                "paddle",
                "int8",
            )
        )
    return candidates, sources


# How NNCF calibrates activation ranges for the --algo_list names that have an equivalent there; mse, KL and emd
# have none (NNCF then uses its default for transformers).
NNCF_RANGE_ESTIMATORS = {"hist": "HISTOGRAM", "abs_max": "MINMAX", "avg": "MEAN_MINMAX"}


def nncf_int8(run: "CompressionRun", folder: str) -> dict:
    """model.ov_int8.xml for the folder's float model, calibrated on max(--batch_size_list) x max(--batch_num_list)
    training examples with the first --algo_list range estimator NNCF has (NNCF_RANGE_ESTIMATORS)."""
    subset = run.calibration[: max(run.args.batch_size_list) * max(run.args.batch_num_list)]
    algo = next((a for a in run.args.algo_list if a in NNCF_RANGE_ESTIMATORS), None)
    nncf_quantize(folder, subset, algo)
    return {
        "algo": f"nncf {NNCF_RANGE_ESTIMATORS[algo].lower() if algo else 'default'}",
        "calibration_examples": len(subset),
    }


def nncf_quantize(folder: str, calibration: Sequence[dict], algo: Optional[str]) -> str:
    """NNCF's post-training quantization of the folder's ONNX conversion for OpenVINO (one example a calibration
    sample), saved beside it as model.ov_int8.xml."""
    import nncf
    import openvino
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = (
        AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, NNCF_RANGE_ESTIMATORS[algo])
        )
        if algo
        else None
    )
    dataset = nncf.Dataset(
        list(calibration),
        lambda feature: {name: np.array([feature[name]], dtype="int64") for name in EXPORT_INPUT_NAMES},
    )
    model = openvino.Core().read_model(onnx_conversion(folder))
    quantized = nncf.quantize(
        model,
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        advanced_parameters=advanced,
    )
    target = os.path.join(folder, OpenVinoPredictor.INT8_FILE)
    openvino.save_model(quantized, target)
    return target


@dataclass(frozen=True)
class Deployment:
    """Another way to serve a float model: its folder name, backend, precision, and what makes its files."""

    name: str
    backend: str
    precision: str
    prepare: Optional[Callable] = None  # (run, folder) -> report extras


FLOAT_DEPLOYMENTS = (
    Deployment("bf16", "paddle", "bf16"),  # oneDNN bfloat16, where the CPU has it natively
    Deployment("onnxruntime_int8", "onnxruntime", "int8"),  # ONNX Runtime's dynamic quantization
    Deployment("openvino_bf16", "openvino", "bf16"),  # OpenVINO's bfloat16, where the CPU has it natively
    Deployment("openvino_int8", "openvino", "int8", nncf_int8),  # NNCF post-training quantization
)


def deployment_step(run: CompressionRun, sources: List[Source]) -> Tuple[List[dict], List[Source]]:
    """Each float model served the other fast ways this machine and --backends/--precisions allow, each in its own
    folder (the float files linked, not copied) whose task.json says how to serve it."""
    candidates = []
    for source in run.float_models:
        for deployment in FLOAT_DEPLOYMENTS:
            if not run.allows(deployment.backend, deployment.precision) or (
                deployment.precision == "bf16" and not native_bfloat16()
            ):
                continue
            relative = os.path.join(source.prefix, deployment.name)
            folder = os.path.join(run.staging, relative)
            link_model_folder(os.path.join(run.staging, source.prefix or "parent"), folder)
            logger.info("candidate %s: %s %s", relative, deployment.backend, deployment.precision)
            extras = deployment.prepare(run, folder) if deployment.prepare else {}
            candidates.append(
                run.measured(
                    relative,
                    {
                        "kind": deployment.precision,
                        "source": source.directory,
                        "parameters": parameter_count(source.model),
                        **extras,
                    },
                    deployment.backend,
                    deployment.precision,
                )
            )
    return candidates, sources


def link_model_folder(source: str, target: str) -> None:
    """target gets source's files (hard links where the file system allows, else copies), not its sub-folders."""
    os.makedirs(target)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and not name.endswith(".onnx"):
            try:
                os.link(path, os.path.join(target, name))
            except OSError:
                shutil.copy2(path, os.path.join(target, name))


@dataclass(frozen=True)
class Strategy:
    steps: Tuple[Callable, ...]  # each (run, sources) -> (candidates, sources for the next step); the last one
    # (deployment_step) adds the other ways of serving each float model (FLOAT_DEPLOYMENTS)
    help: str


STRATEGIES = {
    "dynabert+ptq": Strategy(
        (prune_step, ptq_step, deployment_step),
        "DynaBERT width pruning with distillation, then int8 post-training "
        "quantization of each pruned model over the calibration grid",
    ),
    "dynabert": Strategy(
        (prune_step, deployment_step), "DynaBERT width pruning with distillation only (float candidates)"
    ),
    "ptq": Strategy(
        (ptq_step, deployment_step), "int8 post-training quantization of the parent over the calibration grid"
    ),
    "qat": Strategy(
        (qat_step, deployment_step), "int8 quantization-aware training of the parent, by distillation from it"
    ),
    "dynabert+qat": Strategy(
        (prune_step, qat_step, deployment_step),
        "DynaBERT width pruning, then quantization-aware training of each pruned model",
    ),
}


def check_compression_output(output_dir: str, overwrite: bool) -> None:
    """Never replace an earlier compression by accident; any other folder (upstream writes into ./) is fine."""
    if os.path.exists(os.path.join(output_dir, "compress_report.json")) and not overwrite:
        raise UserError(
            f"--output_dir {output_dir} already holds a compression (compress_report.json); pass "
            "--overwrite_output_dir to replace it or choose another --output_dir"
        )


def strategies_help() -> str:
    return "Strategies (--strategy):\n" + "\n".join(
        f"  {name}: {strategy.help}" for name, strategy in STRATEGIES.items()
    )


def parse_compress_arguments(family: str, description: str, argv=None):
    """(args, data_args, window_args or None), with the task from --task_name, upstream's --dataset, or the family's
    only task, and the parent model defaulting to output/<task>."""
    extra_classes = (QAWindowArguments,) if family == "qa" else ()
    argv = with_task_name(user_argv(argv), family)
    args, data_args, *extra = parse_plain_arguments(
        (CompressArguments, DataArguments, *extra_classes),
        description + "\n" + strategies_help() + "\n" + COMPRESSION_HELP,
        argv,
    )
    if args.model_name_or_path is None:
        args.model_name_or_path = default_output_dir(data_args.task_name)
        if not os.path.isdir(args.model_name_or_path):
            raise UserError(
                f"no fine-tuned model in {args.model_name_or_path}: make one with `python {FAMILIES[family].script} "
                f"--task_name {data_args.task_name}` (it writes there), or pass --model_name_or_path DIR"
            )
    return args, data_args, extra[0] if extra else None


def split_selection(examples: list, requested: Optional[int], seed: int) -> Tuple[list, list]:
    """(training examples, selection examples): a seeded random slice held out for choosing checkpoints."""
    if len(examples) < 2:
        raise UserError("compression needs at least 2 training examples (one is held out to select checkpoints)")
    count = requested if requested is not None else min(1000, max(1, len(examples) // 10))
    if not 0 < count < len(examples):
        raise UserError(
            f"--selection_samples must be between 1 and {len(examples) - 1} (the training data has "
            f"{len(examples)} examples)"
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    held_out = set(int(i) for i in order[:count])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [e for i, e in enumerate(examples) if i in held_out],
    )


def load_training_and_selection(task: TaskSpec, data_args, tokenizer, window_args, args: CompressArguments):
    """The encoded training split without the held-out selection examples, and (selection examples, encoded)."""
    examples = load_examples(task, "train", data_args.train_file, data_args.max_train_samples)
    training, selection = split_selection(examples, args.selection_samples, args.seed)
    logger.info(
        "%s: %d training examples for distillation and calibration, %d held out to select checkpoints",
        task.name,
        len(training),
        len(selection),
    )
    encode = functools.partial(
        encode_examples,
        task,
        tokenizer=tokenizer,
        max_seq_length=data_args.max_seq_length,
        truncate=data_args.truncate_long_texts,
        window_args=window_args,
    )
    return encode("train", training, with_labels=True), (selection, encode("selection", selection, with_labels=False))


def run_compression(family: str, model_class, description: str, argv=None) -> dict:
    """compress_*.py: the steps of --strategy over a fine-tuned model, every candidate measured on the dev set, the
    best one within --max_metric_drop of the parent chosen, all in compress_report.json."""
    args, data_args, window_args = parse_compress_arguments(family, description, argv)
    setup_logging()
    check_device(args.device)
    paddle.set_device(args.device)
    task = get_task(data_args.task_name, family, data_args.label_list)
    widths = check_compress_arguments(args)
    config = load_model_config(args.model_name_or_path)
    if model_head_family(config) is None:
        raise UserError(
            f"{args.model_name_or_path} is not a fine-tuned model (its config names no task head): "
            f"compress an output directory of {FAMILIES[family].script}"
        )
    check_model_fits_task(config, args.model_name_or_path, task)
    data_args.max_seq_length = data_args.max_seq_length or task.max_seq_length
    output_dir = os.path.abspath(args.output_dir or os.path.join(args.model_name_or_path, "compress"))
    check_compression_output(output_dir, args.overwrite_output_dir)

    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path)
    parent = load_task_model(model_class, args.model_name_or_path, task, data_args.max_seq_length)
    train_encoded, selection = load_training_and_selection(task, data_args, tokenizer, window_args, args)
    # the dev set as infer.py encodes it, so that each candidate's measured metric is the one infer.py reports
    dev_examples, dev_encoded = load_encoded_split(
        task, "dev", data_args, load_deployed_tokenizer(args.model_name_or_path), window_args
    )
    calibration = [{name: f[name] for name in EXPORT_INPUT_NAMES} for f in train_encoded.dataset]
    np.random.default_rng(args.seed).shuffle(calibration)
    info = task_info(task, data_args)

    with atomic_entries(output_dir, args.overwrite_output_dir) as staging:
        run = CompressionRun(
            args,
            task,
            window_args,
            tokenizer,
            parent,
            info,
            widths,
            train_encoded,
            selection,
            dev_examples,
            dev_encoded,
            calibration,
            staging,
            output_dir,
        )
        export_static_model(parent, tokenizer, os.path.join(staging, "parent"), info)
        parent_entry = run.measured(
            "parent", {"kind": "float parent", "source": args.model_name_or_path, "parameters": parameter_count(parent)}
        )
        candidates, sources = [], [Source(parent, args.model_name_or_path, "")]
        run.float_models.append(sources[0])
        for step in STRATEGIES[args.strategy].steps:
            made, sources = step(run, sources)
            candidates.extend(made)
        for candidate in candidates:
            candidate["drop_points"] = parent_entry["metric_points"] - candidate["metric_points"]
        best = choose_best(parent_entry, candidates, args.max_metric_drop)
        best_int8 = choose_best(parent_entry, [c for c in candidates if c["precision"] == "int8"], args.max_metric_drop)
        tensorrt_int8 = choose_for_tensorrt(parent_entry, candidates, args.max_metric_drop)
        report = {
            "task": {
                "name": task.name,
                "metric": task.metric,
                "points": "percent" if FAMILIES[family].metric_in_percent else "fraction x 100",
            },
            "strategy": args.strategy,
            "max_metric_drop": args.max_metric_drop,
            "calibration_examples": len(calibration),
            "measured_on": {
                **machine_details(),
                "threads": args.num_threads,
                "batch_size": args.per_device_eval_batch_size,
                "note": "speeds are dev-set sequences per second on this machine; best is the fastest "
                "candidate within --max_metric_drop that is faster than the parent",
            },
            "checkpoint_selection": {
                "examples": len(selection[0]),
                "data": "held out from the training data (never "
                "trained on); the dev set judges the candidates against --max_metric_drop",
            },
            "parent": parent_entry,
            "candidates": candidates,
            "best": best["path"] if best else None,
            "best_int8": best_int8["path"] if best_int8 else None,
            "tensorrt_int8": tensorrt_int8["path"] if tensorrt_int8 else None,
        }
        write_json_atomic(os.path.join(staging, "compress_report.json"), report)
    print(compression_table(report))
    if best is None:
        raise UserError(
            f"no candidate is within --max_metric_drop {args.max_metric_drop} points of the float parent "
            f"({parent_entry['metric_points']:.2f}) and faster than it; nothing is chosen "
            f"(see {output_dir}/compress_report.json)"
        )
    print(
        f"best: {best['path']} ({best['backend']} {best['precision']}, {task.metric} {best['metric_points']:.2f} points, "
        f"drop {best['drop_points']:.2f}, {best['sequences_per_second'] / parent_entry['sequences_per_second']:.2f}x the "
        f"parent's speed)"
    )
    return report
