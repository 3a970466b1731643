"""int8 quantization algorithms: Paddle's post-training quantization over a grid of calibration settings, quantization-
aware training by distillation from the float model, and NNCF's post-training quantization for OpenVINO. (ONNX
Runtime's dynamic quantization is a way of serving a float model: predictors.OnnxRuntimePredictor makes it.)

Imports dynabert.py (distillation), model_folder.py, model_io.py, predictors.py, runtime.py and utils.py.
"""

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import paddle

from dynabert import DistillationSettings, distillation_training
from model_folder import EXPORT_INPUT_NAMES, TaskFile, read_model_files
from model_io import export_input_spec, export_legacy_static_model, one_choice_per_row, save_deployable
from predictors import OpenVinoPredictor, onnx_conversion, pad_features
from runtime import logger, quiet_logger
from utils import TaskSpec


def keep_float_for_quantization(model) -> None:
    """paddlenlp 3.0.0b4's ERNIE and BERT forward read pooler.dense.weight.dtype to build the attention mask;
    paddle 3.0.0's QAT wraps a quantized Linear in a layer without .weight ("'MAOutputScaleLayer' object has
    no attribute 'weight'"), so the pooler's one dense layer stays float (skip_quant is QAT's own switch)."""
    pooler = getattr(getattr(model, model.base_model_prefix, None), "pooler", None)
    if pooler is not None and hasattr(pooler, "dense"):
        pooler.dense.skip_quant = True


PTQ_ALGORITHMS = ("hist", "mse", "avg", "abs_max", "KL", "emd")


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


def quantization_aware_training(
    source_model, teacher, tokenizer, task: TaskSpec, train_encoded, target_dir: str, settings: DistillationSettings
) -> None:
    """Fake-quantize every Linear (weights per channel, activations by moving average), train by distillation
    from the float parent, and save int8.pdmodel + int8.pdiparams in the legacy format."""

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
        settings,
        [lambda: None],
        lambda: None,
        "QAT distillation",
    )
    student.eval()
    one_choice_per_row(student)  # multiple choice: the saved program scores each row, as export_static_model's
    with paddle.pir_utils.OldIrGuard():
        quantizer.save_quantized_model(student, os.path.join(target_dir, "int8"), input_spec=export_input_spec())


@dataclass(frozen=True)
class CalibrationSetting:
    """One point of the PTQ grid: the activation-range algorithm and the calibration batches."""

    algo: str
    batch_size: int
    batches: int

    @property
    def name(self) -> str:
        return f"{self.algo}{self.batch_size}_{self.batches}"


def calibration_grid(algos: Sequence[str], batch_sizes: Sequence[int], batch_nums: Sequence[int], examples: int):
    """Every algorithm x batch size x batch count that the calibration examples can fill (the others are logged)."""
    grid = []
    for setting in (CalibrationSetting(a, s, n) for a in algos for s in batch_sizes for n in batch_nums):
        if setting.batch_size * setting.batches > examples:
            logger.warning("skipping %s: the calibration set has only %d examples", setting.name, examples)
            continue
        grid.append(setting)
    return grid


def quantization_grid(
    source_model, relative_prefix: str, staging: str, calibration, tokenizer, info: TaskFile, grid
) -> List[Tuple[str, CalibrationSetting]]:
    """Every setting of the grid as an int8 candidate of one float model, staged under relative_prefix:
    (relative path, setting) of each."""
    candidates = []
    with tempfile.TemporaryDirectory() as legacy_dir:
        export_legacy_static_model(source_model, legacy_dir)
        for setting in grid:
            relative = os.path.join(relative_prefix, setting.name)
            target = os.path.join(staging, relative)
            logger.info("post-training quantization %s", relative)
            quantize_post_training(legacy_dir, target, calibration, setting.algo, setting.batch_size, setting.batches)
            save_deployable(target, tokenizer, info)
            candidates.append((relative, setting))
    return candidates


NNCF_RANGE_ESTIMATORS = {"hist": "HISTOGRAM", "abs_max": "MINMAX", "avg": "MEAN_MINMAX"}


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
    model = openvino.Core().read_model(onnx_conversion(read_model_files(folder)))
    with quiet_logger("nncf"):  # its INFO lines name each Gather it leaves alone
        quantized = nncf.quantize(
            model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            advanced_parameters=advanced,
            # the embedding tables are looked up, not multiplied: they stay float (half_precision_tables)
            ignored_scope=nncf.IgnoredScope(types=["Gather"], validate=False),
        )
    half_precision_tables(quantized)
    target = os.path.join(folder, OpenVinoPredictor.INT8_FILE)
    openvino.save_model(quantized, target)
    return target


def half_precision_tables(model) -> None:
    """Store each float32 table a Gather looks up (the word, position and type embeddings) as float16 widened after
    the lookup, in place. OpenVINO 2026.4's CPU plugin then gathers from the float16 table. NNCF's
    int8 tables are widened to float32 when the model is compiled (its CPU plugin leaves an int8 Gather to the
    low-precision passes in a quantized model, which fold it): for the Medium shape, a 123 MB word embedding in the
    compiled model and its cache, against 61 MB in float16."""
    import openvino
    from openvino import opset13

    for gather in (op for op in model.get_ordered_ops() if op.get_type_name() == "Gather"):
        table = gather.input_value(0).get_node()
        if table.get_type_name() != "Constant" or table.get_output_element_type(0) != openvino.Type.f32:
            continue
        values = table.get_data()
        if values.ndim != 2 or not np.all(np.abs(values) <= np.finfo(np.float16).max):
            continue
        widened = opset13.convert(opset13.constant(values.astype(np.float16)), openvino.Type.f32)
        gather.input(0).replace_source_output(widened.output(0))
