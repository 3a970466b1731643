"""TensorRT through Paddle Inference on a GPU, for predictors.py's PaddlePredictor: what the machine must have (checked
before any GPU work; one line naming what to install), the two routes (PIR-TRT's paddle.tensorrt.convert for PIR
programs; enable_tensorrt_engine for legacy .pdmodel programs, the int8 PTQ/QAT candidates, with the shape range of
every tensor collected from the program), the cache of what they build (one self-contained folder per key, built
aside and renamed into place under a lock, so that `serve.py --workers N` builds it once; used only when every file
it names is there), and what engaged (TensorRT engines counted, never assumed).

None of it has run on a GPU where this suite is developed: tests/test_tensorrt_routes.py drives it with fakes of
Paddle 3.0.0's API (its real signatures; a real paddle.inference.Config underneath).

Imports model_folder.py and runtime.py.
"""

import contextlib
import functools
import gc
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import paddle

from model_folder import EXPORT_INPUT_NAMES, ModelFiles
from runtime import UserError, atomic_directory, first_line, logger, remove_stale_staging

MIN_SUBGRAPH_SIZE = 5  # ops; smaller TensorRT subgraphs cost more in copies than they save
WORKSPACE_BYTES = 1 << 30
# [low, high) of the values PIR-TRT's warm-up and the legacy shape collection feed: any real token ids; token types 0
# ((0, 1) gives zeros on every version; (0, 0) is np.random.randint(0, 0), a ValueError, where Input's
# generate_input_data has no low == high case, as the issue read it in 3.0; later versions fill with low)
INPUT_VALUE_RANGES = {"input_ids": (1, 1000), "token_type_ids": (0, 1)}
KEY_FILE = "key.json"  # written last: a folder without it was never finished
SHAPE_FILE = "shape_range_info.pbtxt"  # the legacy route's collected shape ranges
ENGINE_FOLDER = "engines"  # the PIR route's engine files, copied in from wherever paddle.tensorrt wrote them
ENGINE_ATTRIBUTE = "engine_serialized_data"  # the tensorrt_engine op's attribute naming its engine file
# what the legacy route names each serialized engine in the optim cache folder: trt_serialized_<engine key>
# (paddle/fluid/inference/analysis/helper.h, GetTrtEngineSerializedPath)
LEGACY_ENGINE_PREFIX = "trt_serialized_"


# ---- what the machine must have --------------------------------------------------------------------------------------
def version_text(parts) -> str:
    return ".".join(str(part) for part in parts)


def read_tensorrt_version(getter) -> str:
    """A paddle.inference TensorRT version as text, '' where there is none: (0, 0, 0) in a build without TensorRT, an
    exception where the library cannot be loaded (Paddle's dynamic loader raises; its type varies by build)."""
    try:
        parts = tuple(getter())
    except Exception:  # whatever the loader raises means the same: no usable library
        return ""
    return version_text(parts) if any(parts) else ""


def tensorrt_library_versions() -> Tuple[str, str]:
    """(compile, runtime): the TensorRT this paddle was built against, and the libnvinfer it loads."""
    inference = paddle.inference
    return read_tensorrt_version(inference.get_trt_compile_version), read_tensorrt_version(
        inference.get_trt_runtime_version
    )


def tensorrt_python_version() -> str:
    """The `tensorrt` Python package's version ('' when it is missing or its libraries do not load): PIR-TRT's
    converter imports it unguarded and builds every engine with it."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return ""
    return str(getattr(tensorrt, "__version__", "unknown"))


def major(version: str) -> str:
    return version.split(".", 1)[0]


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def missing_for_tensorrt(pir: bool) -> List[str]:
    """What this machine lacks for --use_trt (for PIR programs, pir=True), each with how to install it. A serialized
    engine runs only on the TensorRT version that built it: the library paddle loads must be of the major version
    paddle was compiled against (Paddle itself only warns), and PIR-TRT's engines, built by the tensorrt Python
    package and run by that library, need the package of the library's major.minor."""
    compile_version, runtime_version = tensorrt_library_versions()
    if not compile_version:
        return ["a paddlepaddle-gpu build with TensorRT (this paddle was compiled without it)"]
    missing = missing_library(compile_version, runtime_version)
    if pir:
        missing += missing_python_package(runtime_version if not missing else compile_version)
    return missing


def missing_library(compile_version: str, runtime_version: str) -> List[str]:
    install = (
        f"`pip install tensorrt=={compile_version}` with its site-packages/tensorrt_libs on LD_LIBRARY_PATH, or "
        "NVIDIA's TensorRT with its lib folder on LD_LIBRARY_PATH"
    )
    if not runtime_version:
        return [f"the TensorRT {compile_version} library (libnvinfer.so.{major(compile_version)}): {install}"]
    if major(runtime_version) != major(compile_version):
        return [
            f"the TensorRT {compile_version} library in place of the TensorRT {runtime_version} one it loads (paddle "
            f"was compiled against TensorRT {major(compile_version)}): {install}"
        ]
    return []


def missing_python_package(library_version: str) -> List[str]:
    python_version = tensorrt_python_version()
    if not python_version:
        return [
            "the tensorrt Python package, which PIR-TRT (model.json programs) imports: "
            f"`pip install tensorrt=={library_version}`"
        ]
    if python_version != "unknown" and major_minor(python_version) != major_minor(library_version):
        return [
            f"a tensorrt Python package of TensorRT {major_minor(library_version)} (it has {python_version}, the "
            f"library {library_version}; an engine runs only on the TensorRT that built it): "
            f"`pip install tensorrt=={library_version}`"
        ]
    return []


def check_tensorrt(pir: bool) -> None:
    missing = missing_for_tensorrt(pir)
    if missing:
        raise UserError(f"--use_trt needs {'; and '.join(missing)} (see the README's GPU section)")


def gpu_environment() -> Dict[str, str]:
    """What an engine depends on besides the model and its options: the GPU, TensorRT (library and Python package),
    Paddle (version and commit), CUDA and cuDNN. Part of every cache key; gpu_check records it."""
    compile_version, runtime_version = tensorrt_library_versions()
    version = paddle.version
    return {
        "gpu": paddle.device.cuda.get_device_name(0) if paddle.is_compiled_with_cuda() else "no gpu",
        "tensorrt_compile": compile_version,
        "tensorrt_runtime": runtime_version,
        "tensorrt_python": tensorrt_python_version(),
        "paddle": paddle.__version__,
        "paddle_commit": version.commit,
        "cuda": str(version.cuda()),
        "cudnn": str(version.cudnn()),
    }


# ---- the plan: route, shapes and the cache key -----------------------------------------------------------------------
def tensorrt_input_shapes(batch_size: int, max_seq_length: int) -> Tuple[dict, dict, dict]:
    """TensorRT's (min, max, opt) shape of each model input, by input name: 1x1, batch x max_seq_length, and batch x
    a quarter of it (length-sorted batches of real sentences are mostly short)."""
    typical = max(1, max_seq_length // 4)
    minimum = {name: [1, 1] for name in EXPORT_INPUT_NAMES}
    maximum = {name: [batch_size, max_seq_length] for name in EXPORT_INPUT_NAMES}
    optimum = {name: [batch_size, typical] for name in EXPORT_INPUT_NAMES}
    return minimum, maximum, optimum


@dataclass(frozen=True)
class TensorRtPlan:
    """How TensorRT is engaged for one model and its options: the route, the input shapes, and the cache folder of
    what the route builds (one per key)."""

    route: str  # "pir-trt" (PIR programs, *.json) or "legacy" (.pdmodel programs: the int8 PTQ/QAT candidates)
    precision: str
    shapes: Tuple[dict, dict, dict]  # (min, max, opt) per input name
    key: dict
    cache_dir: str  # real and absolute: the converted program names its engine files by this path


def file_signature(path: str) -> dict:
    stat = os.stat(path)
    return {"name": os.path.basename(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def tensorrt_plan(
    files: ModelFiles, precision: str, batch_size: int, max_seq_length: int, environment: Dict[str, str]
) -> TensorRtPlan:
    """PIR programs go through PIR-TRT (Paddle Inference's enable_tensorrt_engine does not apply to them); legacy
    programs through enable_tensorrt_engine, int8 ones with the scales they carry. The key holds everything an engine
    depends on: the environment, the route's settings, the shapes, and the program and parameter files."""
    shapes = tensorrt_input_shapes(batch_size, max_seq_length)
    route = "pir-trt" if files.program.endswith(".json") else "legacy"
    key = {
        **environment,
        "route": route,
        "precision": precision,
        "min": shapes[0],
        "max": shapes[1],
        "opt": shapes[2],
        "min_subgraph_size": MIN_SUBGRAPH_SIZE,
        "workspace_bytes": WORKSPACE_BYTES,
        "program": file_signature(files.program),
        "params": file_signature(files.params),
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    # real: the folder reached through a symbolic link and by its own path is one cache, one lock
    cache_dir = os.path.join(os.path.realpath(files.directory), "tensorrt", digest)
    return TensorRtPlan(route, precision, shapes, key, cache_dir)


# ---- the cache: complete or rebuilt, built once across processes -----------------------------------------------------
def program_engine_paths(program_json: str) -> List[str]:
    """The engine file each tensorrt_engine op of a PIR program (Paddle 3.0's JSON) names in its attribute."""
    with open(program_json, encoding="utf-8") as handle:
        program = json.load(handle)
    return [attribute["AT"]["D"] for attribute in engine_attributes(program)]


def engine_attributes(node) -> list:
    """Every engine_serialized_data attribute ({"N": name, "AT": {"#": type, "D": value}}) anywhere in a program."""
    found, pending = [], [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if item.get("N") == ENGINE_ATTRIBUTE and isinstance(item.get("AT"), dict):
                found.append(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def complete_manifest(plan: TensorRtPlan) -> Optional[dict]:
    """The cache folder's manifest when it was built for this key and every file it lists, and every engine file its
    program names, exists (in this folder); None otherwise: a stale, foreign, unfinished, damaged or copied cache is
    rebuilt, never used."""
    try:
        with open(os.path.join(plan.cache_dir, KEY_FILE), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != plan.key:
        return None
    needed = [os.path.join(plan.cache_dir, name) for name in manifest.get("files", [])]
    if not all(os.path.isfile(path) for path in needed):
        return None
    if plan.route == "pir-trt":
        try:
            named = program_engine_paths(cached_program(plan)[0])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        inside = os.path.join(plan.cache_dir, "")  # a copied model folder's cache names the original's engines
        if not all(os.path.realpath(path).startswith(inside) and os.path.isfile(path) for path in named):
            return None
    return manifest


@contextlib.contextmanager
def exclusive_lock(path: str, wait: bool = True):
    """An advisory lock on path (created) across processes, held for the block; yields whether it is held (it waits
    while another holds it, unless not wait)."""
    import fcntl  # POSIX only, like paddlepaddle-gpu's TensorRT builds

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cached_or_built(plan: TensorRtPlan, build: Callable[[str], dict]) -> Tuple[dict, bool]:
    """(the cache's manifest, whether this process built it). A cold or stale cache is built by build(staging) into
    a staging folder beside it, which takes its place when complete, under a lock: of several processes starting
    at once, the first builds and the others wait for it and then load what it built. Holding the lock, the staging
    folders of builders that died are removed (also by a start that finds the cache complete and the lock free)."""
    lock = os.path.join(os.path.dirname(plan.cache_dir), ".lock")
    manifest = complete_manifest(plan)
    if manifest is not None:
        with exclusive_lock(lock, wait=False) as held:
            if held:
                remove_stale_staging(plan.cache_dir)
        return manifest, False
    with exclusive_lock(lock):
        remove_stale_staging(plan.cache_dir)
        manifest = complete_manifest(plan)
        if manifest is not None:  # another process built it while this one waited
            return manifest, False
        logger.info("building the TensorRT cache %s (%s, %s)", plan.cache_dir, plan.route, plan.precision)
        with atomic_directory(plan.cache_dir) as staging:
            manifest = {"key": plan.key, **build(staging)}
            with open(os.path.join(staging, KEY_FILE), "w", encoding="utf-8") as out:
                json.dump(manifest, out, sort_keys=True)
    return manifest, True


# ---- PIR-TRT: paddle.tensorrt.convert, its engines copied into the cache ---------------------------------------------
def cached_program(plan: TensorRtPlan) -> Tuple[str, str]:
    prefix = os.path.join(plan.cache_dir, "model")
    return prefix + ".json", prefix + ".pdiparams"


def paddle_engine_lock() -> str:
    """Paddle 3.0 builds may write every engine to ~/.pp_trt_cache/engine_<hash of the subgraph>_<n>.trt, one name for
    any precision or shape: conversions are serialized on this lock until their engines are copied out."""
    return os.path.join(os.path.expanduser("~"), ".pp_trt_cache", ".ernie-suite.lock")


def convert_pir_program(plan: TensorRtPlan, program: str, staging: str) -> dict:
    """paddle.tensorrt.convert of program into staging, then every engine file the converted program names copied
    into staging/engines/ and named there by its final absolute path: the cache holds all it needs, wherever
    Paddle wrote the engines (its home cache or the save folder) and from whatever working directory it ran."""
    from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert

    minimum, maximum, optimum = plan.shapes
    inputs = [
        Input(
            min_input_shape=tuple(minimum[name]),
            max_input_shape=tuple(maximum[name]),
            optim_input_shape=tuple(optimum[name]),
            input_data_type="int64",
            input_range=INPUT_VALUE_RANGES[name],
            name=name,
        )
        for name in EXPORT_INPUT_NAMES
    ]
    config = TensorRTConfig(
        inputs=inputs,
        min_subgraph_size=MIN_SUBGRAPH_SIZE,
        save_model_dir=os.path.join(staging, "model"),
        precision_mode=getattr(PrecisionMode, plan.precision.upper()),
        workspace_size=WORKSPACE_BYTES,
    )
    with exclusive_lock(paddle_engine_lock()), scope_of_its_own():
        convert(program[: -len(".json")], config)
        engines = gather_engine_files(os.path.join(staging, "model.json"), staging, plan.cache_dir)
    shutil.rmtree(os.path.join(staging, "model"), ignore_errors=True)  # where some builds write engines and dumps
    logger.info("converted %s for TensorRT (%s): %d engines", program, plan.precision, len(engines))
    return {"files": ["model.json", "model.pdiparams", *engines], "tensorrt_engines": len(engines)}


@contextlib.contextmanager
def scope_of_its_own():
    """paddle.tensorrt.convert loads the parameters into paddle.static.global_scope() on CUDAPlace(0), which a serving
    process would keep, beside its predictor's copy: the conversion gets a scope of its own instead, dropped after it,
    and the GPU memory Paddle's allocator then holds is released (never measured on a GPU here)."""
    try:
        with paddle.static.scope_guard(paddle.static.Scope()):
            yield
    finally:
        gc.collect()
        paddle.device.cuda.empty_cache()


def gather_engine_files(program_json: str, staging: str, cache_dir: str) -> List[str]:
    """Copy each engine file the converted program names (a relative name is the working directory's, as Paddle
    opens it) into staging/engines/, rewrite the program to name it at cache_dir/engines/ (absolute), and return
    the copies' names relative to the cache folder."""
    with open(program_json, encoding="utf-8") as handle:
        converted = json.load(handle)
    os.makedirs(os.path.join(staging, ENGINE_FOLDER), exist_ok=True)
    names = []
    for index, attribute in enumerate(engine_attributes(converted)):
        source = os.path.abspath(attribute["AT"]["D"])
        if not os.path.isfile(source):
            raise UserError(
                f"paddle.tensorrt.convert wrote a program naming the engine {source}, which does not exist; "
                "remove ~/.pp_trt_cache and try again"
            )
        name = os.path.join(ENGINE_FOLDER, f"engine_{index}_{os.path.basename(source)}")
        shutil.copyfile(source, os.path.join(staging, name))
        attribute["AT"]["D"] = os.path.join(cache_dir, name)
        names.append(name)
    temporary = program_json + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(converted, out)
    os.replace(temporary, program_json)
    return names


# ---- the legacy route: enable_tensorrt_engine with collected shape ranges --------------------------------------------
def synthetic_inputs(shape: List[int], seed: int) -> Dict[str, np.ndarray]:
    """One batch of the model's inputs, their values drawn from INPUT_VALUE_RANGES."""
    generator = np.random.default_rng(seed)
    return {
        name: generator.integers(*INPUT_VALUE_RANGES[name], size=shape, dtype=np.int64) for name in EXPORT_INPUT_NAMES
    }


def collection_shapes(plan: TensorRtPlan) -> List[List[int]]:
    """The batch shapes the shape collection runs: min, opt twice, max. Paddle takes each tensor's opt shape as the
    one it saw most often (per dimension), so opt runs twice."""
    minimum, maximum, optimum = (shapes[EXPORT_INPUT_NAMES[0]] for shapes in plan.shapes)
    return [minimum, optimum, optimum, maximum]


def collect_shape_ranges(config, plan: TensorRtPlan, path: str) -> None:
    """Run a plain GPU predictor of the legacy program over the plan's shapes with collect_shape_range_info(path):
    the min/max/opt of every tensor, which enable_tensorrt_engine's dynamic shapes need for every input of each
    TensorRT subgraph (the two model inputs alone suffice only when the embeddings enter TensorRT too). The names
    are the .pdmodel's own, fixed for the program. Paddle writes the file when the predictor is destroyed."""
    config.collect_shape_range_info(path)
    run_synthetic_batches(paddle.inference.create_predictor(config), collection_shapes(plan))
    gc.collect()
    if not os.path.isfile(path):
        raise UserError(f"Paddle's shape collection for TensorRT wrote no {path}")


def run_synthetic_batches(predictor, shapes: List[List[int]]) -> None:
    for seed, shape in enumerate(shapes):
        for name, values in synthetic_inputs(shape, seed).items():
            predictor.get_input_handle(name).copy_from_cpu(values)
        predictor.run()


def configure_legacy_tensorrt(config, plan: TensorRtPlan, folder: str) -> None:
    """enable_tensorrt_engine on a GPU config of a legacy program: int8 from the scales the PTQ/QAT program carries
    (no calibration), the shape ranges collected into folder, the serialized engines kept there (use_static).
    Paddle returns silently from enable_tensorrt_engine when GPU use is off, so whether it took is checked."""
    precision = {
        "fp32": paddle.inference.PrecisionType.Float32,
        "fp16": paddle.inference.PrecisionType.Half,
        "int8": paddle.inference.PrecisionType.Int8,
    }[plan.precision]
    config.set_optim_cache_dir(folder)
    config.enable_tensorrt_engine(
        workspace_size=WORKSPACE_BYTES,
        max_batch_size=plan.shapes[1][EXPORT_INPUT_NAMES[0]][0],
        min_subgraph_size=MIN_SUBGRAPH_SIZE,
        precision_mode=precision,
        use_static=True,
        use_calib_mode=False,
    )
    config.enable_tuned_tensorrt_dynamic_shape(os.path.join(folder, SHAPE_FILE), True)
    if not config.tensorrt_engine_enabled():
        raise UserError("Paddle Inference did not enable TensorRT for this config (is GPU use on?)")


def build_legacy_engines(plan: TensorRtPlan, files: ModelFiles, gpu_config: Callable, staging: str) -> dict:
    """The shape ranges collected, then one TensorRT predictor created, run once at the opt shape and dropped, to
    build and serialize the engines into staging (Paddle builds them when the predictor is created, or at the first
    run where it defers them). The engines are the trt_serialized_* files there; whatever else Paddle writes is kept
    but not counted."""
    collect_shape_ranges(gpu_config(files.program, files.params), plan, os.path.join(staging, SHAPE_FILE))
    builder = paddle.inference.create_predictor(legacy_config(plan, files, gpu_config, staging))
    run_synthetic_batches(builder, collection_shapes(plan)[1:2])
    del builder
    gc.collect()
    written = sorted(
        os.path.relpath(os.path.join(folder, name), staging) for folder, _, names in os.walk(staging) for name in names
    )
    engines = [name for name in written if name.startswith(LEGACY_ENGINE_PREFIX)]
    return {"files": written, "tensorrt_engines": len(engines)}


def legacy_config(plan: TensorRtPlan, files: ModelFiles, gpu_config: Callable, folder: str):
    config = gpu_config(files.program, files.params)
    configure_legacy_tensorrt(config, plan, folder)
    return config


# ---- starting a TensorRT predictor -----------------------------------------------------------------------------------
@dataclass
class TensorRtStart:
    """A started TensorRT predictor and what engaged: engines in its program, and whether this process built them."""

    predictor: object
    plan: TensorRtPlan
    engines: int
    built: bool
    engine: str  # what ran, for infer.py's "engine"


def start_tensorrt(
    files: ModelFiles,
    precision: str,
    batch_size: int,
    max_seq_length: int,
    gpu_config: Callable,
    allow_no_engine: bool,
) -> TensorRtStart:
    """A predictor running TensorRT for files, its engines built once into the cache or loaded from it.
    gpu_config(program, params) is the plain GPU config of a program (enable_use_gpu already called)."""
    plan = tensorrt_plan(files, precision, batch_size, max_seq_length, gpu_environment())
    with paddle_errors_as_one_line(plan, files.directory):
        if plan.route == "pir-trt":
            manifest, built = cached_or_built(plan, functools.partial(convert_pir_program, plan, files.program))
            config = gpu_config(*cached_program(plan))
        else:
            manifest, built = cached_or_built(plan, functools.partial(build_legacy_engines, plan, files, gpu_config))
            config = legacy_config(plan, files, gpu_config, plan.cache_dir)
        engines = int(manifest.get("tensorrt_engines", 0))
        engine = engine_description(plan, engines, allow_no_engine)
        predictor = paddle.inference.create_predictor(config)
    return TensorRtStart(predictor, plan, engines, built, engine)


@contextlib.contextmanager
def paddle_errors_as_one_line(plan: TensorRtPlan, model_dir: str):
    """Whatever a failed conversion, build or start raises (Paddle's RuntimeError and ValueError, an ImportError from
    paddle.tensorrt, the converter's TypeError, AssertionError or KeyError, an OSError of the files) is one line
    naming the model folder and the error's first line, not a traceback from deep inside Paddle; a UserError is
    already one line and passes through."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # any failure of Paddle's or TensorRT's here is the model's start failing
        raise UserError(
            f"TensorRT ({plan.route}, {plan.precision}) could not build or start the engines of {model_dir} "
            f"(cache {plan.cache_dir}): {error_line(error)}"
        ) from None


def error_line(error: BaseException) -> str:
    """The error's type and first line (a KeyError's text alone is the bare key)."""
    text, name = first_line(error), type(error).__name__
    return text if text == name else f"{name}: {text}"


def engine_description(plan: TensorRtPlan, engines: int, allow_no_engine: bool) -> str:
    """What runs, as infer.py reports it; a program TensorRT took no subgraph of is refused unless allowed."""
    if engines:
        return f"tensorrt {plan.precision} via {plan.route}: {engines} engines (cache {plan.cache_dir})"
    if not allow_no_engine:
        raise UserError(
            f"--use_trt: TensorRT took no subgraph of this program ({plan.route}, subgraphs of {MIN_SUBGRAPH_SIZE} "
            "ops or more), so it would run as plain GPU Paddle Inference; pass --allow_no_trt_engine to run it so"
        )
    logger.warning("TensorRT took no subgraph (%s): running plain GPU Paddle Inference", plan.route)
    return f"paddle-inference gpu: --use_trt took no TensorRT subgraph ({plan.route}, cache {plan.cache_dir})"
