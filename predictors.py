"""Deployment backends behind one interface (predictor.run(batch) -> outputs), chosen from one table (BACKENDS):
Paddle Inference (CPU with oneDNN, GPU, and TensorRT, whose routes and cache tensorrt_routes.py holds), ONNX Runtime
and OpenVINO over the ONNX conversion of an exported folder, and the dynamic-graph model for the compression loop.
Each backend class owns its checks. Also the length-aware batching that infer.py, serve.py, the compression
measurements and the benchmarks share. Which model to serve, and how, is deployment.py's.

paddle, paddle2onnx and tensorrt_routes.py are imported only where a Paddle program is run or converted
(full_install_module), so that an install without them (requirements-deploy.txt) serves the ONNX Runtime and OpenVINO
files of a model folder.

Imports arguments.py (the device check), model_folder.py, runtime.py and tensorrt_routes.py (for TensorRT only).
"""

import concurrent.futures
import contextlib
import dataclasses
import importlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from arguments import default_device
from model_folder import EXPORT_INPUT_NAMES, ModelFiles, read_model_files
from runtime import UserError, cpu_model_and_flags, first_line, logger


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
    length_bucket: Optional[int] = None  # Paddle, OpenVINO on the CPU: pad batches to a multiple of this; None: by kind
    allow_no_trt_engine: bool = False  # --use_trt: run a program TensorRT took no subgraph of (else an error)
    # ONNX Runtime's intra-op threads spin between calls; None: ONNX Runtime's own (on)
    onnxruntime_spinning: Optional[bool] = None
    # model calls that may run at once, each from a thread of its own on num_threads / streams threads (serve.py's
    # --model_streams; ONNX Runtime and OpenVINO only)
    streams: int = 1


def public_options(options: PredictorOptions) -> dict:
    return dataclasses.asdict(options)


def full_install_module(name: str, needed_for: str, instead: str):
    """A module of the full install (requirements.txt: paddle, paddle2onnx, ONNX Runtime's quantization tools),
    imported where it is needed; an install without it (requirements-deploy.txt) gets one line saying what needed it
    and what to do instead."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UserError(
            f"{needed_for} needs {name.split('.')[0]}, which this install lacks ({first_line(error)}; a deploy-only "
            f"install, requirements-deploy.txt?): {instead}"
        ) from None


def installed(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def paddle_inference(files: ModelFiles):
    """paddle, for the paddle backend, or one line for an install without it."""
    return full_install_module(
        "paddle",
        f"{files.directory}: its Paddle program ({os.path.basename(files.program)}) on the paddle backend",
        "serve it with the full install (requirements.txt), or serve a compressed candidate folder that holds its "
        "ONNX Runtime or OpenVINO files (compress_*.py's onnxruntime_int8/ or openvino_int8/)",
    )


def served_as_it_is(target: str, source: str, tool: str) -> bool:
    """Whether the file target, made from source, is served without being made again: it is newer than source, or
    it exists and cannot be made again here (a read-only folder, or a deploy-only install without the tool), so that
    a folder copied without its files' times (as cp -r copies) serves the files it was measured with."""
    if not os.path.isfile(target):
        return False
    if os.path.getmtime(target) >= os.path.getmtime(source):
        return True
    if os.access(os.path.dirname(target), os.W_OK) and installed(tool):
        return False
    logger.info("%s is older than %s and cannot be made again here (%s): served as it is", target, source, tool)
    return True


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
    refuse_options_of_other_backends(options)
    BACKENDS[options.backend].check(options, files)


def runs_on_onednn(options: PredictorOptions) -> bool:
    """Whether the model runs on oneDNN's kernels: the paddle backend on the CPU with oneDNN on."""
    return options.backend == "paddle" and options.device == "cpu" and options.enable_onednn


def refuse_options_of_other_backends(options: PredictorOptions) -> None:
    """An option that does nothing with the backend chosen is one error line, not silently ignored."""
    backend = options.backend
    if options.onnxruntime_spinning is not None and backend != "onnxruntime":
        raise UserError(f"--onnxruntime_spinning is ONNX Runtime's: it does nothing with --backend {backend}")
    if not options.enable_onednn and backend != "paddle":
        raise UserError(f"--enable_onednn is the paddle backend's: it does nothing with --backend {backend}")
    if (options.length_bucket or 1) > 1 and not (backend == "openvino" or runs_on_onednn(options)):
        raise UserError(
            "--length_bucket pads batches for oneDNN (--backend paddle on the CPU) and OpenVINO; here each batch is "
            "padded to its longest: leave it out"
        )


def refuse_tensorrt_elsewhere(options: PredictorOptions) -> None:
    if options.use_trt and (options.backend != "paddle" or options.device != "gpu"):
        raise UserError("--use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu")
    if options.precision == "fp16" and (options.backend != "paddle" or options.device != "gpu"):
        raise UserError(
            "--precision fp16 runs on GPUs (mixed precision, or TensorRT with --use_trt): use --backend paddle "
            "--device gpu"
        )


def native_bfloat16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16, which AMX CPUs have too); elsewhere oneDNN would emulate
    it, slower than fp32. It is the instruction Paddle's supports_bfloat16_fast_performance asks for, read here from
    /proc/cpuinfo so that OpenVINO's bf16 needs no paddle (Paddle's own check where there is no /proc/cpuinfo)."""
    try:
        return "avx512_bf16" in cpu_model_and_flags()[1]
    except OSError:
        paddle = full_install_module("paddle", "checking for native bfloat16", "use --precision fp32")
        return bool(paddle.base.core.supports_bfloat16_fast_performance())


def check_bfloat16(options: PredictorOptions, quantized: bool) -> None:
    if not runs_on_onednn(options):
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
# The PIR passes that turn a float program's matmul + add into oneDNN fc ops (Config.disable_mkldnn_fc_passes does
# not reach PIR programs: measured, no change). An fc reorders its weights for each input shape; at batch 1 sentences
# come in any order and each length is a new shape for the two-shape cache, so that reorder is paid on most calls.
# ERNIE 3.0-Medium, float, 2 threads (AMD EPYC, avx512 without avx_vnni), 300 TNEWS dev sentences one at a time in
# file order: p50 25.5-27.2 ms without these passes against 43.0-44.1 ms with them, peak 1.10 against 1.44 GB; with a
# 32-shape cache the fc path took 22 ms at 3.6 GB. At 2 rows a call the two were even, at 4 and 16 rows the fc path
# was 10-40% faster (batches in file order), and sorted batches of 32 ran 71-77 against 82 seq/s: so batch 1 only.
PIR_ONEDNN_FC_PASSES = ("matmul_add_act_fuse_pass", "fc_onednn_pass")


def unfused_at_batch_one(options: PredictorOptions, program: str, quantized: bool) -> bool:
    """Whether a predictor of these options runs its matmuls unfused when made for --batch_size 1: a float fp32
    PIR program on oneDNN."""
    float_pir = not quantized and options.precision == "fp32" and program.endswith(".json")
    return float_pir and runs_on_onednn(options)


def has_lone_call_predictor(files: ModelFiles, options: PredictorOptions) -> bool:
    """Whether a server of these options and files can run its 1-row calls on a predictor of their own (one that
    unfused_at_batch_one), its main predictor not being one already (--batch_size 1 makes it so)."""
    return options.batch_size > 1 and unfused_at_batch_one(options, files.program, files.quantized)


def refuse_lone_call_predictor_elsewhere(files: ModelFiles, options: PredictorOptions, wanted: Optional[bool]):
    """serve.py's --lone_call_predictor given where there is no such predictor: one error line, not ignored."""
    if wanted is not None and not has_lone_call_predictor(files, options):
        raise UserError(
            "--lone_call_predictor is for float models served by --backend paddle on oneDNN (fp32, a model.json "
            "program, --batch_size above 1): it does nothing here, leave it out"
        )


class LoneCallPredictor:
    """A serving predictor that runs 1-row calls on a second predictor built for batch 1 (unfused matmuls:
    PIR_ONEDNN_FC_PASSES) and every other call on the main one, whose length bucket, kept shapes and token budget it
    has. The second one is made and run on a thread of its own (Paddle keeps some of oneDNN's state per thread): on
    the batcher's thread the pair lost at concurrency 32 (73% against 77% of offline batch 32, 3 rounds of 4), on its
    own thread it did not (78% both); whether the two predictors still share FLOAT_ONEDNN_CACHED_SHAPES' two shapes
    was not measured."""

    def __init__(self, main, make_lone):
        self.main = main
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lone-call-predictor")
        try:
            self.lone = self.thread.submit(make_lone).result()
        except BaseException:  # no thread left behind by a predictor that could not start
            self.thread.shutdown()
            raise
        self.engine = f"{main.engine}; 1-row calls: {self.lone.engine}"

    def __getattr__(self, name):
        return getattr(self.main, name)

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        if len(batch["input_ids"]) == 1:
            return self.thread.submit(self.lone.run, batch).result()
        return self.main.run(batch)


STREAMING_BACKENDS = ("onnxruntime", "openvino")  # one model, calls at once: a session; a compiled model's streams


def default_model_streams(options: PredictorOptions) -> int:
    """serve.py's model streams when --model_streams is left unset: two for ONNX Runtime on the CPU with --num_threads
    2 (one thread each: check_model_streams), else one. The 3/4-width Medium in int8, 2 threads, AMD EPYC
    (avx512_vnni, no avx_vnni), serve.py at concurrency 32 against offline batch 32, 4 paired rounds each: ONNX
    Runtime 86% with two against 61% with one
    (every round won), concurrency 1 p50 6.3 against 6.0 ms (a lone request runs on every thread: StreamedPredictor);
    serve.py's peak 313-315 MB against 256-262. OpenVINO gained too (81% against 71%, every round won) but its
    second compiled model took serve.py's peak from about 400 to 629-638 MB, over #24's 450 MB: it keeps one unless
    asked (with a single 2-stream model instead, a lone request took 10.7-11.0 ms against offline's 6.6). Not
    measured on other CPUs."""
    return 2 if options.backend == "onnxruntime" and options.device == "cpu" and options.num_threads == 2 else 1


def check_model_streams(options: PredictorOptions, streams: Optional[int]) -> None:
    """serve.py's --model_streams given: more than one only where calls may run at once on one model
    (STREAMING_BACKENDS), each on an equal share of --num_threads."""
    if streams is None or streams == 1:
        return
    if options.backend not in STREAMING_BACKENDS or options.device != "cpu":
        raise UserError(
            f"--model_streams {streams}: only --backend onnxruntime and openvino on the CPU run model calls at once "
            "on one model; leave it out here (or give 1)"
        )
    if options.num_threads % streams:
        raise UserError(
            f"--model_streams {streams} splits --num_threads {options.num_threads} unevenly: give a number of threads "
            f"that {streams} divides"
        )
    if options.backend == "onnxruntime" and options.num_threads != streams:
        # ONNX Runtime's calls at once on a session share its one intra-op pool: only callers of one thread each
        # (no pool) keep to their share
        raise UserError(
            f"--model_streams {streams} on ONNX Runtime runs each call on one thread (its calls at once share one "
            f"thread pool): give --num_threads {streams}, or --model_streams {options.num_threads}"
        )


def stream_options(options: PredictorOptions, streams: int) -> PredictorOptions:
    """The options of a predictor whose calls run `streams` at a time, each on its share of the threads."""
    return dataclasses.replace(options, streams=streams)


def create_serving_predictor(files: ModelFiles, options: PredictorOptions, lone_call_predictor: Optional[bool]):
    """serve.py's predictor: create_predictor's, paired with a batch-1 one where has_lone_call_predictor and
    lone_call_predictor is not False (None: where it applies)."""
    main = create_predictor(files, options)
    if lone_call_predictor is False or not has_lone_call_predictor(files, options):
        return main
    return LoneCallPredictor(main, lambda: create_predictor(files, dataclasses.replace(options, batch_size=1)))


class StreamedPredictor:
    """serve.py's predictor with model streams: `whole` runs on every thread, one call at a time; `shared` runs
    `streams` calls at once, each on its share of the threads (stream_options). The batcher runs a lone request on
    whole (a lone client's latency is then one stream's), the others on shared. Warm-ups and call timings (run) are
    whole's, as are its length bucket and token budget."""

    def __init__(self, whole, shared, streams: int, threads: int):
        self.whole, self.shared = whole, shared
        self.engine = f"{whole.engine}; beside another batch, {streams} at once on {threads // streams} thread(s) each"

    def __getattr__(self, name):
        return getattr(self.whole, name)

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self.whole.run(batch)


def create_streamed_predictor(files: ModelFiles, options: PredictorOptions, lone_call_predictor, streams: int):
    """serve.py's predictor: create_serving_predictor's, or with more than one stream a StreamedPredictor."""
    if streams == 1:
        return create_serving_predictor(files, options, lone_call_predictor)
    shared = create_predictor(files, stream_options(options, streams))
    return StreamedPredictor(create_predictor(files, options), shared, streams, options.num_threads)


# OpenVINO's CPU plugin compiles kernels for every new input shape and keeps them (about 4 MB a shape for the
# 3/4-width Medium in int8): a first call at a new length took 50-80 ms more at batch 32. Measured with infer.py
# --perf on 3,000 TNEWS sentences, 2 threads (Xeon with AMX), int8, end to end: the 3/4-width Medium 782 seq/s with no
# buckets (870 MB peak), 1028 with 8 tokens (655 MB), 867 with 16 (527 MB), 787 with 32 (451 MB); a Nano-shaped model
# 1067, 2449, 2333, 2102 seq/s (785, 475, 369, 311 MB).
OPENVINO_LENGTH_BUCKET = 8
# serve.py's default --max_batch_tokens for OpenVINO int8 (serving.ServingLimits.for_predictor): the 3/4-width Medium,
# 2 threads on a Xeon with AMX, concurrency 32 against offline batch 32 in 4 paired rounds, 63-92% (median 74%)
# with 2048 tokens against 61-69% (67%) with 1024, every round won (B/A 1.11; a second A/B: 68% against 65%, 7 rounds
# of 8); serve.py's peak after 3,000 TNEWS sentences 32 a request 417 against 406 MB. The float Paddle model gained
# nothing (1 round of 4), so it keeps 1024, as do OpenVINO's fp32 and bf16 (not measured).
OPENVINO_INT8_BATCH_TOKENS = 2048


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
    """TensorRT's (min, max, opt) shape of each model input for these options (tensorrt_routes.py's rule)."""
    import tensorrt_routes  # imports paddle

    return tensorrt_routes.tensorrt_input_shapes(options.batch_size, options.max_seq_length)


GPU_MEMORY_POOL_MB = 256


def gpu_config(program: str, params: str, mixed_precision: bool = False):
    """A Paddle Inference config running program on GPU 0 (fp16 mixed precision when asked), with Paddle's logging
    off."""
    import paddle

    config = paddle.inference.Config(program, params)
    config.disable_glog_info()
    half = [paddle.inference.PrecisionType.Half] if mixed_precision else []
    config.enable_use_gpu(GPU_MEMORY_POOL_MB, 0, *half)
    return config


class PaddlePredictor:
    """Paddle Inference: CPU (oneDNN on or off, threads), GPU, or TensorRT (tensorrt_routes.py: the route, its
    cache and what engaged)."""

    name = "paddle"
    help = "Paddle Inference (CPU with oneDNN fp32, bf16 or an int8 model; GPU; TensorRT)"

    @staticmethod
    def check(options: PredictorOptions, files: ModelFiles) -> None:
        quantized, model_dir = files.quantized, files.directory
        paddle_inference(files)
        if options.device == "gpu" and default_device() != "gpu":
            raise UserError(
                "--device gpu needs paddlepaddle-gpu and a visible GPU, but this paddle is CPU-only or sees no GPU "
                "(see the README's GPU section)"
            )
        refuse_tensorrt_elsewhere(options)
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
        if options.use_trt:
            import tensorrt_routes

            tensorrt_routes.check_tensorrt(pir=files.program.endswith(".json"))

    def __init__(self, files: ModelFiles, options: PredictorOptions):
        self.program, self.params = files.program, files.params
        self.model_dir, self.options = files.directory, options
        self.quantized = files.quantized
        self.model_files = [self.program, self.params]  # what is served
        self.tensorrt = None  # with --use_trt: its plan and engines (a tensorrt_routes.TensorRtStart)
        self.predictor = self.start(files)
        self.input_names = self.predictor.get_input_names()
        onednn = runs_on_onednn(options)
        # oneDNN builds primitives per input shape: a bounded set of lengths bounds that cost and its memory
        self.length_bucket = max(1, options.length_bucket or default_length_bucket(self.quantized)) if onednn else 1
        self.max_length = options.max_seq_length  # buckets stop here
        # how many input shapes' primitives and reordered weights oneDNN keeps (config); None: every one
        self.shapes_kept = FLOAT_ONEDNN_CACHED_SHAPES if onednn and not self.quantized else None

    def start(self, files: ModelFiles):
        options = self.options
        if not options.use_trt:
            return paddle_inference(files).inference.create_predictor(self.config())
        import tensorrt_routes

        self.tensorrt = tensorrt_routes.start_tensorrt(
            files,
            options.precision,
            options.batch_size,
            options.max_seq_length,
            gpu_config,
            options.allow_no_trt_engine,
        )
        self.engine = self.tensorrt.engine
        return self.tensorrt.predictor

    def config(self):
        """The config without TensorRT: GPU (fp16 as mixed precision), or the CPU with oneDNN's kernels or not."""
        options = self.options
        if options.device == "gpu":
            mixed = options.precision == "fp16"
            self.engine = f"paddle-inference gpu {'fp16 mixed precision' if mixed else 'fp32'}"
            return gpu_config(self.program, self.params, mixed)
        import paddle

        config = paddle.inference.Config(self.program, self.params)
        config.disable_glog_info()
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
            if options.batch_size == 1 and unfused_at_batch_one(options, self.program, self.quantized):
                for name in PIR_ONEDNN_FC_PASSES:
                    config.delete_pass(name)
                self.engine += ", unfused matmuls for batch 1"
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
    if served_as_it_is(target, params, "paddle2onnx"):
        return target
    paddle2onnx = full_install_module(
        "paddle2onnx",
        f"{files.directory} holds no model.onnx: converting its Paddle program",
        "run it once with the full install (requirements.txt), which writes model.onnx beside the program, or serve "
        "a compressed candidate folder (compress_*.py's onnxruntime_int8/ or openvino_int8/)",
    )
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
        session_options.intra_op_num_threads = options.num_threads // options.streams  # session.run: calls at once
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = ORT_ERRORS_ONLY
        if options.onnxruntime_spinning is not None:
            spinning = "1" if options.onnxruntime_spinning else "0"
            session_options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        return session_options

    @staticmethod
    def quantized(onnx_file: str) -> str:
        target = onnx_file.replace(".onnx", ".int8.onnx")
        if served_as_it_is(target, onnx_file, "onnxruntime.quantization"):
            return target
        full_install_module(  # its tools import the onnx package
            "onnxruntime.quantization",
            f"{os.path.dirname(target)} holds no {os.path.basename(target)}: ONNX Runtime's dynamic quantization",
            "run it once with the full install (requirements.txt), which writes it beside model.onnx, or serve a "
            "compressed candidate folder (compress_*.py's onnxruntime_int8/)",
        )
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
    (compress_*.py writes openvino_int8/ with model.ov_int8.xml). Compiled models are cached in .ov_cache/<precision>/
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
        cache = self.compiled_model_cache(model_dir, options.precision)
        if cache:
            core.set_property({"CACHE_DIR": cache})
        hint = {"bf16": "bf16"}.get(options.precision, "f32")  # int8 layers run int8 whatever the hint of the rest
        # streams: calls that run at once, each on its infer request, on num_threads / streams threads (OpenVINO's
        # CPU streams); one is the latency hint's
        parallel = {"NUM_STREAMS": options.streams} if options.streams > 1 else {"PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(
            source, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": options.num_threads, **parallel}
        )
        self.requests = threading.local()  # an infer request for each thread that runs calls
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.length_bucket = max(1, options.length_bucket or OPENVINO_LENGTH_BUCKET)
        if options.precision == "int8":
            self.batch_tokens = OPENVINO_INT8_BATCH_TOKENS
        self.max_length = options.max_seq_length
        self.model_files = [source] + ([source[:-4] + ".bin"] if source.endswith(".xml") else [])
        self.engine = f"openvino cpu {options.precision}"

    @staticmethod
    def compiled_model_cache(model_dir: str, precision: str) -> Optional[str]:
        """.ov_cache/<precision> beside the model, where OpenVINO keeps what it compiled so that later starts are
        fast; None (compile at every start) in a read-only folder without one, where OpenVINO fails to create it (a
        candidate folder copied into a read-only image; one copied with its .ov_cache reads it). One folder a
        precision: OpenVINO 2026.4 names a compiled model by the same key whatever its precision hint, so bf16 read
        the blob fp32 had written and aborted ("double free or corruption")."""
        cache = os.path.join(model_dir, ".ov_cache", precision)
        if os.path.isdir(cache):
            return cache
        nearest = os.path.dirname(cache) if os.path.isdir(os.path.dirname(cache)) else model_dir
        return cache if os.access(nearest, os.W_OK) else None

    @property
    def request(self):
        """This thread's infer request (made at its first call): one request runs one call at a time."""
        if not hasattr(self.requests, "request"):
            self.requests.request = self.compiled.create_infer_request()
        return self.requests.request

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


def bucket_lengths(predictor, max_seq_length: int) -> set:
    """Every length the predictor pads a batch to (the multiples of its length_bucket, and max_seq_length); none
    for a predictor that pads to each batch's longest."""
    bucket = getattr(predictor, "length_bucket", 1)
    return set(range(bucket, max_seq_length + 1, bucket)) | {max_seq_length} if bucket > 1 else set()


def warm_up_buckets(predictor, batch_size: int, max_seq_length: int) -> int:
    """Run one batch of every bucket length, so that served batches meet no new shape; returns how many shapes were
    run. The longest runs first (warm_up_shapes)."""
    lengths = bucket_lengths(predictor, max_seq_length)
    return len(warm_up_shapes(predictor, {(batch_size, length) for length in lengths}))


def warm_up_shapes(predictor, shapes) -> list:
    """Run one batch of each (rows, length) shape, the largest first (most tokens, then the longer): a backend
    allocates for a new shape and keeps what it freed, so going up in size leaves each smaller allocation behind
    (OpenVINO, 16 lengths at 32 rows: 193 MB more resident memory largest first, 322 MB smallest first). Returns the
    shapes in the order they ran."""
    order = sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape[1]), reverse=True)
    for shape in order:
        predictor.run(ones_batch(shape))
    return order


def ones_batch(shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Model inputs of one (rows, length) shape, every id 1: what warm-ups and call timings run."""
    ids = np.ones(shape, dtype="int64")
    return {name: ids for name in EXPORT_INPUT_NAMES}


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
    warmed_shapes: int = 0  # shapes run before timing (warm_shapes)


def run_predictor(
    predictor,
    features: Sequence[dict],
    batch_size: int,
    per_token: bool,
    sort_by_length: bool = True,
    pad_to: Optional[int] = None,
    warmup_batches: int = 0,
    warm_shapes: bool = False,
) -> PredictionRun:
    """Run every feature through the predictor in batches; results come back in input order.

    per_token: the outputs have a value per input token (NER logits, QA start/end logits), which are cut back
    to each feature's own length; otherwise one value per sequence (classification logits).
    warmup_batches: run (and leave untimed) this many batches first. A predictor with a length_bucket gets each batch
    padded to a multiple of it (at most the longest feature), so that few shapes occur. warm_shapes: first run one
    batch of each shape the batches have (warm_up_shapes), so that no timed batch meets a new one, and no shape
    that never runs is built (a backend keeps memory for each); a predictor without buckets (ONNX Runtime) builds
    nothing a shape, and warming each exact length raised its peak (572 against 393 MB on 3,000 TNEWS sentences).
    """
    import time

    batches = batch_order(features, batch_size, sort_by_length)
    bucket = getattr(predictor, "length_bucket", 1)
    cap = getattr(predictor, "max_length", None) or max(len(f["input_ids"]) for f in features)

    def padded_length(indices) -> int:
        longest = max(len(features[i]["input_ids"]) for i in indices)
        return pad_to or bucket_length(longest, bucket, max(cap, longest))

    def padded(indices):
        return pad_features([features[i] for i in indices], padded_length(indices))

    shapes = {(len(indices), padded_length(indices)) for indices in batches} if warm_shapes and bucket > 1 else set()
    warm_up_shapes(predictor, shapes)
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
    return PredictionRun(outputs or [], seconds, [len(b) for b in batches], len(shapes))


class DygraphPredictor:
    """A dynamic-graph model behind the predictor interface, so run_predictor and the metrics serve it too."""

    def __init__(self, model):
        self.model = model

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        import paddle

        self.model.eval()
        with paddle.no_grad():
            outputs = self.model(**{name: paddle.to_tensor(value) for name, value in batch.items()})
        return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


# ---- what a prediction looks like (infer.py --text/--input_file, serve.py) ----------------------------------------


# ---- which model to deploy, and how (infer.py, serve.py) ----------------------------------------------------------
