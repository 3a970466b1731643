"""Deployment backends behind one interface (predictor.run(batch) -> outputs), chosen from one table (BACKENDS):
Paddle Inference (CPU with oneDNN, GPU, TensorRT through PIR-TRT or the legacy engine, with its cache), ONNX Runtime
and OpenVINO over the ONNX conversion of an exported folder, and the dynamic-graph model for the compression loop.
Each backend class owns its checks. Also the length-aware batching that infer.py, serve.py, the compression
measurements and the benchmarks share. Which model to serve, and how, is deployment.py's.

Imports arguments.py (the device check), model_folder.py and runtime.py.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

from arguments import default_device
from model_folder import EXPORT_INPUT_NAMES, ModelFiles, read_model_files
from runtime import UserError, first_line, logger


@dataclass(frozen=True)
class PredictorOptions:
    backend: str = "paddle"  # a name in BACKENDS: "paddle", "onnxruntime" or "openvino"
    device: str = "cpu"
    use_trt: bool = False
    precision: str = "fp32"  # "fp32", "fp16", "bf16" or "int8"
    num_threads: int = 2
    enable_onednn: bool = True
    batch_size: int = 32
    max_seq_length: int = 128
    length_bucket: Optional[int] = None  # Paddle CPU: pad batches to a multiple of this many tokens; None: by kind


def public_options(options: PredictorOptions) -> dict:
    return dataclasses.asdict(options)


PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "gpu")


def check_predictor_options(options: PredictorOptions, files: ModelFiles) -> None:
    """Refuse combinations this machine or this model cannot run, instead of silently running something else:
    the shared checks here, the backend's own in its class."""
    if options.backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, not {options.backend!r}")
    if options.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {options.precision!r}")
    if options.device not in DEVICES:
        raise UserError(f"--device must be cpu or gpu, not {options.device!r}")
    BACKENDS[options.backend].check(options, files)


def refuse_tensorrt_elsewhere(options: PredictorOptions) -> None:
    if options.use_trt and (options.backend != "paddle" or options.device != "gpu"):
        raise UserError("--use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu")
    if options.precision == "fp16" and (options.backend != "paddle" or options.device != "gpu"):
        raise UserError(
            "--precision fp16 runs on GPUs (mixed precision, or TensorRT with --use_trt): use --backend paddle "
            "--device gpu"
        )


def native_bfloat16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN would emulate it, slower than
    fp32."""
    return bool(paddle.base.core.supports_bfloat16_fast_performance())


def check_bfloat16(options: PredictorOptions, quantized: bool) -> None:
    if options.backend != "paddle" or options.device != "cpu" or not options.enable_onednn:
        raise UserError(
            "--precision bf16 runs oneDNN's bfloat16 kernels: it needs --backend paddle --device cpu with oneDNN on"
        )
    if quantized:
        raise UserError("--precision bf16 needs a float model, not an int8 one")
    refuse_emulated_bfloat16()


def refuse_emulated_bfloat16() -> None:
    if not native_bfloat16():
        raise UserError(
            "--precision bf16 needs a CPU with native bfloat16 (avx512_bf16 or AMX); on this one it would be "
            "emulated and slower than fp32"
        )


FLOAT_ONEDNN_CACHED_SHAPES = 2


def default_length_bucket(quantized: bool) -> int:
    """Measured on ERNIE 3.0-Medium, 3,000 TNEWS sentences, 2 threads (AMD EPYC): float, buckets of 8 tokens gave
    181 seq/s end to end (16: 165; 1: 152, p99 2.7x p50); int8 keeps every shape's primitives (building one costs
    up to 5 batches), about 240 MB a shape, so 16 (8 shapes, 2.8 GB peak; 8 tokens: 4.8 GB for 9% more speed)."""
    return 16 if quantized else 8


# The ops oneDNN runs in int8: the quantized matmuls and what lies between them. With every op oneDNN can quantize
# (the default) it also quantizes others (the residual adds among them) with scales the calibration never measured:
# a small ERNIE trained on TNEWS fell from 31.75% to 21.25% accuracy, while the same program with its quantize ops
# in fp32 kept 31.75%; with these ops it scored 32.1%, at 5% more time than the default set (medium, 32x128, measured).
ONEDNN_INT8_OPS = {"fc", "matmul", "matmul_v2", "reshape2", "transpose2"}


def steady_onednn_int8(config) -> None:
    """paddle 3.0.0, oneDNN int8: with matmul_elementwise_add_onednn_fuse_pass (the residual add fused into the
    matmul) an ERNIE gives its right logits on a new input shape's first run only; every later run of that shape
    differs (by 0.3 against the float logits' range of 1.1 for ERNIE 3.0-Medium, measured). Without the pass the
    runs agree with each other and with that first run, at the same speed."""
    config.pass_builder().delete_pass("matmul_elementwise_add_onednn_fuse_pass")


def tensorrt_input_shapes(options: PredictorOptions) -> Tuple[dict, dict, dict]:
    """TensorRT's (min, max, opt) shape of each model input, by input name: 1x1, batch x --max_seq_length, and
    batch x a quarter of it (length-sorted batches of real sentences are mostly short). Set from the options,
    never collected: collected files name intermediate tensors whose names change between processes."""
    typical = max(1, options.max_seq_length // 4)
    minimum = {name: [1, 1] for name in EXPORT_INPUT_NAMES}
    maximum = {name: [options.batch_size, options.max_seq_length] for name in EXPORT_INPUT_NAMES}
    optimum = {name: [options.batch_size, typical] for name in EXPORT_INPUT_NAMES}
    return minimum, maximum, optimum


@dataclass
class TensorRtPlan:
    """How TensorRT is engaged for one model and options: the route, and where its converted program or serialized
    engines are cached (a folder per key: GPU, TensorRT version, precision, input shapes and the model file)."""

    route: str  # "pir-trt" (PIR programs, model.json) or "legacy" (.pdmodel programs: the int8 PTQ/QAT candidates)
    precision: str
    shapes: Tuple[dict, dict, dict]  # (min, max, opt) per input name
    key: dict
    cache_dir: str


def gpu_name() -> str:
    return paddle.device.cuda.get_device_name() if paddle.is_compiled_with_cuda() else "no gpu"


def tensorrt_version() -> str:
    return ".".join(str(part) for part in paddle.inference.get_trt_runtime_version())


def tensorrt_plan(program: str, options: PredictorOptions, gpu: str, trt_version: str) -> TensorRtPlan:
    """PIR programs go through PIR-TRT (paddle.tensorrt.convert: Paddle Inference's enable_tensorrt_engine does not
    apply to them); legacy programs through enable_tensorrt_engine, int8 ones with the scales they carry."""
    shapes = tensorrt_input_shapes(options)
    stat = os.stat(program)
    key = {
        "gpu": gpu,
        "tensorrt": trt_version,
        "precision": options.precision,
        "min": shapes[0],
        "max": shapes[1],
        "opt": shapes[2],
        "program": os.path.basename(program),
        "program_bytes": stat.st_size,
        "program_mtime": int(stat.st_mtime),
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    route = "pir-trt" if program.endswith(".json") else "legacy"
    return TensorRtPlan(
        route, options.precision, shapes, key, os.path.join(os.path.dirname(program), "tensorrt", digest)
    )


def cached_plan_matches(plan: TensorRtPlan) -> bool:
    """Whether plan's cache folder holds what this key built (a stale or foreign cache is rebuilt, never used)."""
    path = os.path.join(plan.cache_dir, "key.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle) == plan.key
        except ValueError:
            return False


TENSORRT_VOCAB_RANGE = (1, 1000)  # ids the PIR-TRT warm-up feeds (any real token ids); token types: 0


def pir_trt_program(plan: TensorRtPlan, program: str) -> Tuple[str, str]:
    """The PIR program with TensorRT engine ops, converted once per key by paddle.tensorrt.convert and reloaded from
    the cache after that. paddle.tensorrt exists only in GPU builds, so it is imported here, on this route alone."""
    prefix = os.path.join(plan.cache_dir, "model")
    if not cached_plan_matches(plan):
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert

        shutil.rmtree(plan.cache_dir, ignore_errors=True)
        os.makedirs(plan.cache_dir)
        minimum, maximum, optimum = plan.shapes
        inputs = []
        for name in EXPORT_INPUT_NAMES:
            spec = Input(
                min_input_shape=tuple(minimum[name]),
                max_input_shape=tuple(maximum[name]),
                optim_input_shape=tuple(optimum[name]),
                input_data_type="int64",
                input_range=TENSORRT_VOCAB_RANGE if name == "input_ids" else (0, 0),
                name=name,
            )
            inputs.append(spec)
        precision = {"fp32": PrecisionMode.FP32, "fp16": PrecisionMode.FP16, "int8": PrecisionMode.INT8}[plan.precision]
        convert(
            program[: -len(".json")],
            TensorRTConfig(
                inputs=inputs,
                min_subgraph_size=5,
                save_model_dir=prefix,
                precision_mode=precision,
                workspace_size=1 << 30,
            ),
        )
        write_key(plan)
        logger.info("converted %s for TensorRT (%s) into %s", program, plan.precision, plan.cache_dir)
    return prefix + ".json", prefix + ".pdiparams"


def configure_legacy_tensorrt(config, plan: TensorRtPlan) -> None:
    """enable_tensorrt_engine on a legacy program: int8 from the scales the PTQ/QAT program carries (no calibration),
    the input ranges set explicitly, the serialized engines kept in the plan's cache folder (use_static)."""
    if not cached_plan_matches(plan):
        shutil.rmtree(plan.cache_dir, ignore_errors=True)
        os.makedirs(plan.cache_dir)
        write_key(plan)
    precision = {
        "fp32": paddle.inference.PrecisionType.Float32,
        "fp16": paddle.inference.PrecisionType.Half,
        "int8": paddle.inference.PrecisionType.Int8,
    }[plan.precision]
    config.set_optim_cache_dir(plan.cache_dir)
    config.enable_tensorrt_engine(
        workspace_size=1 << 30,
        max_batch_size=plan.shapes[1]["input_ids"][0],
        min_subgraph_size=5,
        precision_mode=precision,
        use_static=True,
        use_calib_mode=False,
    )
    config.set_trt_dynamic_shape_info(*plan.shapes)


def write_key(plan: TensorRtPlan) -> None:
    with open(os.path.join(plan.cache_dir, "key.json"), "w", encoding="utf-8") as out:
        json.dump(plan.key, out, sort_keys=True)


class PaddlePredictor:
    """Paddle Inference: CPU (oneDNN on or off, threads), GPU, or TensorRT with the input shape ranges set
    explicitly."""

    name = "paddle"
    help = "Paddle Inference (CPU with oneDNN fp32, bf16 or an int8 model; GPU; TensorRT)"

    @staticmethod
    def check(options: PredictorOptions, files: ModelFiles) -> None:
        quantized, model_dir = files.quantized, files.directory
        if options.device == "gpu" and default_device() != "gpu":
            raise UserError(
                "--device gpu needs paddlepaddle-gpu and a visible GPU, but this paddle is CPU-only or sees no GPU "
                "(see the README's GPU section)"
            )
        refuse_tensorrt_elsewhere(options)
        if options.use_trt and tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
            raise UserError(
                "--use_trt needs a paddlepaddle-gpu build with TensorRT; this paddle was compiled without it"
            )
        if options.precision == "bf16":
            check_bfloat16(options, quantized)
        if options.precision == "int8" and not quantized and options.use_trt:
            raise UserError(
                f"{model_dir} is a float model: TensorRT int8 needs an int8 model with its scales; make one with "
                "compress_*.py (`python infer.py --use_trt --precision int8` serves its best int8 candidate)"
            )
        if options.precision == "int8" and not quantized:
            raise UserError(
                f"{model_dir} is a float model: int8 on the Paddle backend needs an int8 model from compress_*.py "
                "(or use --backend onnxruntime, which quantizes the float model dynamically)"
            )
        if quantized and options.use_trt and options.precision != "int8":
            raise UserError(f"{model_dir} is an int8 model: serve it with --precision int8")
        if quantized and options.precision != "int8":
            raise UserError(
                f"{model_dir} is an int8 model: serve it with --precision int8 (as {options.precision} its "
                "quantize ops would run in floating point, slower than the float model)"
            )
        if quantized and options.device == "cpu" and not options.enable_onednn:
            raise UserError("int8 models run on oneDNN's int8 kernels: leave --enable_onednn on")
        if quantized and options.device == "gpu" and not options.use_trt:
            raise UserError("int8 models run on GPUs through TensorRT: add --use_trt")

    def __init__(self, files: ModelFiles, options: PredictorOptions):
        self.program, self.params = files.program, files.params
        self.model_dir, self.options = files.directory, options
        self.quantized = files.quantized
        self.model_files = [self.program, self.params]  # what is served
        self.predictor = paddle.inference.create_predictor(self.config())
        self.input_names = self.predictor.get_input_names()
        onednn = options.device == "cpu" and options.enable_onednn
        # oneDNN builds primitives per input shape: a bounded set of lengths bounds that cost and its memory
        self.length_bucket = max(1, options.length_bucket or default_length_bucket(self.quantized)) if onednn else 1
        self.max_length = options.max_seq_length  # buckets stop here

    def config(self):
        options = self.options
        program, params = self.program, self.params
        if options.use_trt:
            self.plan = tensorrt_plan(program, options, gpu_name(), tensorrt_version())
            if self.plan.route == "pir-trt":
                program, params = pir_trt_program(self.plan, program)
        config = paddle.inference.Config(program, params)
        config.disable_glog_info()
        if options.device == "gpu":
            mixed = options.precision == "fp16" and not options.use_trt
            config.enable_use_gpu(256, 0, *([paddle.inference.PrecisionType.Half] if mixed else []))
            self.engine = f"paddle-inference gpu {'fp16 mixed precision' if mixed else 'fp32'}"
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(options.num_threads)
            config.enable_mkldnn() if options.enable_onednn else config.disable_mkldnn()
            if options.precision == "bf16":
                config.enable_mkldnn_bfloat16()
            self.engine = f"paddle-inference cpu {'onednn ' if options.enable_onednn else ''}{options.precision}"
            if self.quantized:
                config.enable_mkldnn_int8(ONEDNN_INT8_OPS)
                steady_onednn_int8(config)
                # legacy programs keep every activation unless told to reuse memory: 2.7 GB against 1.7 GB for
                # ERNIE 3.0-Medium at 32x128 (measured); PIR programs free them by themselves
                config.enable_memory_optim()
            elif options.enable_onednn:
                # oneDNN keeps a copy of the reordered float weights for every input shape it has seen (about
                # 160 MB a shape for ERNIE 3.0-Medium, measured); length-sorted batches meet each shape in a row
                config.set_mkldnn_cache_capacity(FLOAT_ONEDNN_CACHED_SHAPES)
        if options.use_trt:
            if self.plan.route == "legacy":
                configure_legacy_tensorrt(config, self.plan)
            self.engine = f"tensorrt {options.precision} via {self.plan.route} (cache {self.plan.cache_dir})"
        return config

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        for name in self.input_names:
            self.predictor.get_input_handle(name).copy_from_cpu(batch[name])
        self.predictor.run()
        return [self.predictor.get_output_handle(name).copy_to_cpu() for name in self.predictor.get_output_names()]


ORT_ERRORS_ONLY = 3  # ONNX Runtime log severity: errors and fatal only


def refuse_unreadable_program(files: ModelFiles) -> None:
    """paddle2onnx 2.1.0 ends the whole process (exit status 255) on a program it cannot parse: a PIR program is
    JSON, so a damaged one is refused here first, with one line."""
    if not files.program.endswith(".json"):
        return
    try:
        with open(files.program, encoding="utf-8") as handle:
            json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(
            f"{files.directory}: its program {os.path.basename(files.program)} is not valid JSON "
            f"({first_line(error)}); export it again"
        ) from None


def onnx_conversion(files: ModelFiles) -> str:
    """model.onnx beside the exported program, converted once by paddle2onnx and shared by every ONNX-reading
    backend."""
    program, params = files.program, files.params
    target = os.path.join(files.directory, "model.onnx")
    if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(params):
        return target
    import paddle2onnx

    refuse_unreadable_program(files)

    temporary = f"{target}.tmp-{os.getpid()}"
    try:
        # No optimize_tool: the default (polygraphy) pip-installs packages at run time, and 2.1.0's onnxoptimizer
        # step always fails on a misspelt pass name ("eliminate_nop_cast ") and writes the unoptimized model with
        # a warning. ONNX Runtime optimizes the graph itself when it loads it (running the intended passes
        # here measured no faster).
        paddle2onnx.export(
            program,
            params,
            save_file=temporary,
            opset_version=14,
            enable_onnx_checker=True,
            optimize_tool="None",
            verbose=False,
        )
        if not os.path.isfile(temporary):  # paddle2onnx 2.1.0 logs a failed conversion and returns
            raise UserError(f"{files.directory}: paddle2onnx could not convert {program} to ONNX (its log says why)")
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    logger.info("converted %s to %s", program, target)
    return target


class OnnxRuntimePredictor:
    """ONNX Runtime on the model converted once by paddle2onnx (cached as model.onnx beside it); int8 is ONNX
    Runtime's dynamic quantization of that float model (cached as model.int8.onnx). Inputs are fed by name."""

    name = "onnxruntime"
    help = "ONNX Runtime on the cached ONNX conversion (fp32, or int8 by dynamic quantization of a float model)"

    @staticmethod
    def check(options: PredictorOptions, files: ModelFiles) -> None:
        quantized, model_dir = files.quantized, files.directory
        refuse_tensorrt_elsewhere(options)
        if options.precision == "bf16":
            check_bfloat16(options, quantized)
        if quantized:
            raise UserError(
                f"{model_dir} is a Paddle int8 model, which paddle2onnx cannot convert faithfully; give the float "
                "export to --backend onnxruntime --precision int8 instead"
            )

    def __init__(self, files: ModelFiles, options: PredictorOptions):
        import onnxruntime

        onnx_file = onnx_conversion(files)
        if options.precision == "int8":
            onnx_file = self.quantized(onnx_file)
        providers = ["CPUExecutionProvider"]
        if options.device == "gpu":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise UserError("--backend onnxruntime --device gpu needs the onnxruntime-gpu package and a GPU")
            providers.insert(0, "CUDAExecutionProvider")
        self.model_files = [onnx_file]  # what is served
        self.engine = f"onnxruntime {options.device} {options.precision}"
        self.session = onnxruntime.InferenceSession(onnx_file, self.session_options(options), providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]

    @staticmethod
    def session_options(options: PredictorOptions):
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = ORT_ERRORS_ONLY
        return session_options

    @staticmethod
    def quantized(onnx_file: str) -> str:
        target = onnx_file.replace(".onnx", ".int8.onnx")
        if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(onnx_file):
            return target
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # its optimizing session would warn about a leftover paddle2onnx constant it drops
        onnxruntime.set_default_logger_severity(ORT_ERRORS_ONLY)

        prepared, temporary = f"{target}.pre-{os.getpid()}.onnx", f"{target}.tmp-{os.getpid()}.onnx"
        try:
            # paddle2onnx stores every weight as a Constant node; quantize_dynamic only quantizes initializers, so
            # without this preparation (which folds them into initializers) "int8" would be the float model.
            quant_pre_process(onnx_file, prepared, skip_symbolic_shape=True)
            quantize_dynamic(prepared, temporary, weight_type=QuantType.QInt8)
            os.replace(temporary, target)
        finally:
            for leftover in (prepared, temporary):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)
        logger.info("quantized %s to int8 weights in %s", onnx_file, target)
        return target

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self.session.run(None, {name: batch[name] for name in self.input_names})


class OpenVinoPredictor:
    """OpenVINO on the CPU, reading the same cached ONNX conversion as ONNX Runtime (it cannot read Paddle's PIR
    program, nor the legacy int8 program's dequantize ops). fp32 is forced with the precision hint (on CPUs with
    native bfloat16 OpenVINO would otherwise run bf16 silently); int8 is a model that NNCF quantized
    (compress_*.py writes openvino_int8/ with model.ov_int8.xml). Compiled models are cached in .ov_cache/
    beside the model, so later runs start fast."""

    name = "openvino"
    help = "OpenVINO on the CPU on the cached ONNX conversion (fp32, bf16 natively, or an NNCF int8 candidate)"
    INT8_FILE = "model.ov_int8.xml"

    @staticmethod
    def check(options: PredictorOptions, files: ModelFiles) -> None:
        quantized, model_dir = files.quantized, files.directory
        if options.device != "cpu":
            raise UserError("--backend openvino runs on the CPU: use --device cpu")
        refuse_tensorrt_elsewhere(options)
        if quantized:
            raise UserError(
                f"{model_dir} is a Paddle int8 model, which OpenVINO cannot read; serve it with --backend paddle"
            )
        if options.precision == "bf16":
            refuse_emulated_bfloat16()
        if options.precision == "int8" and not os.path.isfile(os.path.join(model_dir, OpenVinoPredictor.INT8_FILE)):
            raise UserError(
                f"{model_dir} holds no OpenVINO int8 model ({OpenVinoPredictor.INT8_FILE}): make one with "
                "compress_*.py (its openvino_int8/ candidates)"
            )

    def __init__(self, files: ModelFiles, options: PredictorOptions):
        import openvino

        model_dir = files.directory
        source = os.path.join(model_dir, self.INT8_FILE) if options.precision == "int8" else onnx_conversion(files)
        core = openvino.Core()
        core.set_property({"CACHE_DIR": os.path.join(model_dir, ".ov_cache")})
        hint = {"bf16": "bf16"}.get(options.precision, "f32")  # int8 layers run int8 whatever the hint of the rest
        self.compiled = core.compile_model(
            source,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": options.num_threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.model_files = [source] + ([source[:-4] + ".bin"] if source.endswith(".xml") else [])
        self.engine = f"openvino cpu {options.precision}"

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        results = self.request.infer({name: batch[name] for name in self.input_names})
        return [np.asarray(results[port]) for port in self.compiled.outputs]


def create_predictor(model: Union[str, ModelFiles], options: PredictorOptions):
    """The backend's predictor for a model folder (or its files, already read), after the option checks."""
    files = model if isinstance(model, ModelFiles) else read_model_files(model)
    check_predictor_options(options, files)
    try:
        return BACKENDS[options.backend](files, options)
    except UserError:
        raise
    except (RuntimeError, ValueError, OSError) as error:  # Paddle, ONNX Runtime and OpenVINO report broken files so
        raise UserError(
            f"{files.directory}: {options.backend} could not load the model ({first_line(error)}); its program or "
            "parameter files are damaged or were not written by this suite: export it again"
        ) from None


BACKENDS = {backend.name: backend for backend in (PaddlePredictor, OnnxRuntimePredictor, OpenVinoPredictor)}


def backends_help() -> str:
    return "; ".join(f"{name}: {backend.help}" for name, backend in BACKENDS.items())


def bucket_length(longest: int, bucket: int, cap: int) -> int:
    """longest rounded up to a multiple of bucket, at most cap (but never below longest)."""
    return max(longest, min(cap, -(-longest // bucket) * bucket))


def warm_up_buckets(predictor, batch_size: int, max_seq_length: int) -> int:
    """Run one batch of every bucket length, so that timed (or served) batches meet no new shape; returns how many
    shapes were run."""
    bucket = getattr(predictor, "length_bucket", 1)
    lengths = sorted(set(range(bucket, max_seq_length + 1, bucket)) | {max_seq_length}) if bucket > 1 else []
    for length in lengths:
        ids = np.ones((batch_size, length), dtype="int64")
        predictor.run({name: ids for name in EXPORT_INPUT_NAMES})
    return len(lengths)


def pad_features(features: Sequence[dict], length: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Model inputs of features padded with 0 (the pad id of these vocabularies) to one length."""
    length = length or max(len(f["input_ids"]) for f in features)
    return {
        name: np.array([f[name] + [0] * (length - len(f[name])) for f in features], dtype="int64")
        for name in EXPORT_INPUT_NAMES
    }


def batch_order(features: Sequence[dict], batch_size: int, sort_by_length: bool) -> List[List[int]]:
    """Indices of each batch: by length (similar lengths share a batch, so little padding) or in input order."""
    order = (
        sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        if sort_by_length
        else list(range(len(features)))
    )
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class PredictionRun:
    outputs: List[List[np.ndarray]]  # per model output, one unpadded array per feature, in input order
    batch_seconds: List[float]
    batch_sizes: List[int]


def run_predictor(
    predictor,
    features: Sequence[dict],
    batch_size: int,
    per_token: bool,
    sort_by_length: bool = True,
    pad_to: Optional[int] = None,
    warmup_batches: int = 0,
) -> PredictionRun:
    """Run every feature through the predictor in batches; results come back in input order.

    per_token: the outputs have a value per input token (NER logits, QA start/end logits), which are cut back
    to each feature's own length; otherwise one value per sequence (classification logits).
    warmup_batches: run (and leave untimed) this many batches first. A predictor with a length_bucket gets each batch
    padded to a multiple of it (at most the longest feature), so that few shapes occur.
    """
    import time

    batches = batch_order(features, batch_size, sort_by_length)
    bucket = getattr(predictor, "length_bucket", 1)
    cap = getattr(predictor, "max_length", None) or max(len(f["input_ids"]) for f in features)

    def padded(indices):
        longest = max(len(features[i]["input_ids"]) for i in indices)
        return pad_features([features[i] for i in indices], pad_to or bucket_length(longest, bucket, max(cap, longest)))

    for indices in batches[:warmup_batches]:
        predictor.run(padded(indices))
    outputs, seconds = None, []
    for indices in batches:
        batch = padded(indices)
        started = time.perf_counter()
        results = predictor.run(batch)
        seconds.append(time.perf_counter() - started)
        if outputs is None:
            outputs = [[None] * len(features) for _ in results]
        for output, result in zip(outputs, results):
            for row, index in enumerate(indices):
                output[index] = result[row][: len(features[index]["input_ids"])] if per_token else result[row]
    return PredictionRun(outputs or [], seconds, [len(b) for b in batches])


class DygraphPredictor:
    """A dynamic-graph model behind the predictor interface, so run_predictor and the metrics serve it too."""

    def __init__(self, model):
        self.model = model

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        self.model.eval()
        with paddle.no_grad():
            outputs = self.model(**{name: paddle.to_tensor(value) for name, value in batch.items()})
        return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


# ---- what a prediction looks like (infer.py --text/--input_file, serve.py) ----------------------------------------


# ---- which model to deploy, and how (infer.py, serve.py) ----------------------------------------------------------
