"""TensorRT and GPU routes, checked on a CPU-only machine against fakes of Paddle 3.0.0's GPU API: paddle.tensorrt's
Input, TensorRTConfig and convert with their real parameters (convert writing engine files and naming them in the
converted program, as the real one does, in either place a 3.0 build writes them), and a paddle.inference.Config
that is the real one underneath (a misspelt method or keyword is the real error), with what only a GPU build does
simulated and every call recorded in order. None of this has run on a GPU here."""

import dataclasses
import enum
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import types

import numpy as np
import paddle
import pytest

import deployment
import infer
import model_folder
import predictors
import tensorrt_routes
from conftest import clue_file, error_lines, run_cli, sample_candidate, sample_report

OPTIONS = dict(backend="paddle", device="gpu", use_trt=True, batch_size=8, max_seq_length=64)
ENVIRONMENT = {
    "gpu": "NVIDIA T4",
    "tensorrt_compile": "8.6.1",
    "tensorrt_runtime": "8.6.1",
    "tensorrt_python": "8.6.1",
    "paddle": "3.0.0",
    "paddle_commit": "6ed5dd3833c32c3b21e14b1fb1a71f5a535a0fcc",
    "cuda": "11.8",
    "cudnn": "8.9.7",
}
REAL_CONFIG = paddle.inference.Config


def model_files(tmp_path, name, quantized=False):
    """A model folder holding a program named name and its parameters (contents only the fakes read)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps({"program": name}))
    (folder / (name.rsplit(".", 1)[0] + ".pdiparams")).write_text("params")
    return model_folder.ModelFiles(
        str(folder), str(folder / name), str(folder / (name.rsplit(".", 1)[0] + ".pdiparams")), quantized
    )


# ---- fakes of Paddle 3.0.0's GPU API ---------------------------------------------------------------------------------
class RecordingConfig:
    """paddle.inference.Config as a GPU build with TensorRT has it: the CPU wheel's real Config underneath, every call
    forwarded to it (so its bindings check every name, argument and keyword) and recorded in order. What a CPU build
    cannot do is simulated after the real binding accepted the arguments: enable_use_gpu turns GPU use on, and
    enable_tensorrt_engine turns TensorRT on only when GPU use is on (Paddle returns silently otherwise)."""

    def __init__(self, *args):
        self.real = REAL_CONFIG(*args)
        self.files = args
        self.calls = []
        self.gpu = False
        self.tensorrt = False

    def __getattr__(self, name):
        method = getattr(self.real, name)  # a misspelt method: the real AttributeError

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            try:
                result = method(*args, **kwargs)  # a wrong keyword or argument: the real TypeError
            except RuntimeError as error:
                if name != "enable_tensorrt_engine" or "compile with TENSORRT" not in str(error):
                    raise
                result = None
            return self.as_gpu_build(name, result)

        return call

    def as_gpu_build(self, name, result):
        if name == "enable_use_gpu":
            self.gpu = True
        elif name == "disable_gpu":
            self.gpu = False
        elif name == "enable_tensorrt_engine":
            self.tensorrt = self.gpu
        elif name == "use_gpu":
            return self.gpu
        elif name == "tensorrt_engine_enabled":
            return self.tensorrt
        return result

    def called(self, name):
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]

    def order(self):
        return [name for name, _, _ in self.calls]


def named_engines(node) -> list:
    """The engine_serialized_data values anywhere in a PIR program's JSON."""
    if isinstance(node, list):
        return [path for item in node for path in named_engines(item)]
    if not isinstance(node, dict):
        return []
    found = [node["AT"]["D"]] if node.get("N") == "engine_serialized_data" else []
    return found + [path for value in node.values() for path in named_engines(value)]


class FakeHandle:
    def __init__(self, store, name):
        self.store, self.name = store, name

    def copy_from_cpu(self, values):
        self.store[self.name] = np.array(values)

    def copy_to_cpu(self):
        batch = len(next(iter(self.store.values())))
        return np.zeros((batch, 2), dtype="float32")


class FakePredictor:
    """What paddle.inference.create_predictor gives on a GPU build, as far as the routes can tell: a converted PIR
    program's engine files are opened at start-up ("Failed to open file" when one is gone); a legacy TensorRT config
    builds and serializes its engines into the optim cache folder (use_static) unless they are there; a shape
    collection writes its file when the predictor is destroyed."""

    def __init__(self, config, world):
        self.config, self.feeds, self.current = config, [], {}
        self.shape_file = next((args[0] for args, _ in config.called("collect_shape_range_info")), None)
        world.predictors.append(config)
        program = config.files[0]
        if program.endswith(".json"):
            with open(program, encoding="utf-8") as handle:
                for path in named_engines(json.load(handle)):
                    if not os.path.isfile(path):  # a relative name is the working directory's
                        raise RuntimeError(f"(NotFound) Failed to open file {path}")
        self.world = world
        if world.legacy_build_at == "create":
            self.build_legacy_engines()

    def build_legacy_engines(self):
        cache = [args[0] for args, _ in self.config.called("set_optim_cache_dir")]
        if self.config.tensorrt and cache:
            for name in self.world.legacy_other_files:
                with open(os.path.join(cache[-1], name), "w") as out:
                    out.write("not an engine")
            for index in range(self.world.legacy_engines):
                path = os.path.join(cache[-1], f"trt_serialized_{index}")
                if not os.path.isfile(path):
                    self.world.legacy_builds += 1
                    with open(path, "w") as out:
                        out.write("engine")

    def get_input_names(self):
        return list(model_folder.EXPORT_INPUT_NAMES)

    def get_output_names(self):
        return ["logits"]

    def get_input_handle(self, name):
        return FakeHandle(self.current, name)

    def get_output_handle(self, name):
        return FakeHandle(self.current, name)

    def run(self):
        self.feeds.append(dict(self.current))
        if self.world.legacy_build_at == "first run":
            self.build_legacy_engines()

    def __del__(self):
        if self.shape_file:
            with open(self.shape_file, "w") as out:
                json.dump([{name: list(values.shape) for name, values in feed.items()} for feed in self.feeds], out)
            self.config.collected = [{name: values.copy() for name, values in feed.items()} for feed in self.feeds]


class PrecisionMode(enum.Enum):
    FP32 = "FP32"
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"


class Input:
    """paddle.tensorrt.export.Input's parameters in 3.0; generate_input_data for integers as Paddle's code without a
    low == high case does it (np.random.randint(low, high))."""

    def __init__(
        self,
        warmup_data=None,
        min_input_shape=None,
        max_input_shape=None,
        optim_input_shape=None,
        input_data_type="float32",
        input_range=None,
        name=None,
    ):
        self.min_input_shape, self.max_input_shape = min_input_shape, max_input_shape
        self.optim_input_shape, self.input_data_type = optim_input_shape, input_data_type
        self.input_range, self.name = input_range, name

    def generate_input_data(self):
        low, high = self.input_range or ((0.0, 1.0) if "float" in self.input_data_type else (1, 10))
        shapes = (self.min_input_shape, self.optim_input_shape, self.max_input_shape)
        return tuple(np.random.randint(low, high, size=shape).astype(self.input_data_type) for shape in shapes)


class TensorRTConfig:
    def __init__(
        self,
        inputs,
        min_subgraph_size=3,
        save_model_dir=None,
        disable_ops=None,
        precision_mode=PrecisionMode.FP32,
        ops_run_float=None,
        optimization_level=3,
        disable_passes=[],  # noqa: B006 - the real signature
        workspace_size=1 << 30,
    ):
        self.inputs, self.min_subgraph_size, self.save_model_dir = inputs, min_subgraph_size, save_model_dir
        self.precision_mode, self.workspace_size = precision_mode, workspace_size


class GpuWorld:
    """The fakes' shared state: how convert places engines ("home": ~/.pp_trt_cache/engine_<hash>_<n>.trt, one name
    for every precision and shape; "save_dir": in the save folder, the path as given; "relative": there too, named
    relative to the working directory as a relative save path leaves it), how many engines it and the
    legacy builder make, and what they did (conversions also logged to a file, for other processes)."""

    def __init__(self, tmp_path):
        self.engine_place, self.engines, self.legacy_engines = "home", 2, 2
        self.legacy_build_at = "create"  # or "first run", where Paddle defers building an engine
        self.legacy_other_files = []  # what else the legacy builder writes beside its trt_serialized_* engines
        self.delay, self.legacy_builds, self.predictors = 0.0, 0, []
        self.conversions, self.named_at_conversion = [], []  # each conversion's arguments; the engines it named
        self.scopes, self.gpu_caches_emptied = [], 0
        self.log = tmp_path / "conversions.log"

    def convert(self, model_path, config):
        """paddle.tensorrt.export.convert(model_path, config) as 3.0 writes its files."""
        if not os.path.isfile(model_path + ".json"):
            raise ValueError(f"No valid model file found in the directory '{model_path}'")
        self.scopes.append(paddle.static.global_scope())  # where the real one loads the parameters
        warmup = [spec.generate_input_data() for spec in config.inputs]
        self.conversions.append((model_path, config, warmup))
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(self.delay)
        text = open(model_path + ".json").read()
        subgraph = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**8
        if self.engine_place == "home":
            root = os.path.join(os.path.expanduser("~"), ".pp_trt_cache")
        else:
            root = config.save_model_dir
        os.makedirs(root, exist_ok=True)
        paths = []
        for index in range(self.engines):
            paths.append(f"{root}/engine_{subgraph}_{index}.trt")
            with open(paths[-1], "w") as out:
                out.write(f"engine {config.precision_mode.value} {config.inputs[0].max_input_shape}")
        if self.engine_place == "relative":
            paths = [os.path.relpath(path) for path in paths]
        self.named_at_conversion.append(paths)
        ops = [{"#": "1.data", "A": [{"AT": {"#": "0.a_str", "D": "input_ids"}, "N": "name"}]}] + [
            {"#": "1.tensorrt_engine", "A": [{"AT": {"#": "0.a_str", "D": path}, "N": "engine_serialized_data"}]}
            for path in paths
        ]
        program = {"base_code": {"magic": "pir", "version": 1}, "program": {"regions": [{"blocks": [{"ops": ops}]}]}}
        with open(config.save_model_dir + ".json", "w") as out:
            json.dump(program, out)
        with open(config.save_model_dir + ".pdiparams", "w") as out:
            out.write("params")

    def conversions_logged(self):
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


@pytest.fixture()
def gpu(monkeypatch, tmp_path):
    """A GPU build with TensorRT 8.6.1, its tensorrt Python package and paddle.tensorrt, faked at their boundary."""
    world = GpuWorld(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    export = types.ModuleType("paddle.tensorrt.export")
    export.Input, export.TensorRTConfig, export.PrecisionMode = Input, TensorRTConfig, PrecisionMode
    export.convert = world.convert
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", types.ModuleType("paddle.tensorrt"))
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", export)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: (8, 6, 1))
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: (8, 6, 1))
    monkeypatch.setattr(predictors, "default_device", lambda: "gpu")
    monkeypatch.setattr(paddle.inference, "Config", RecordingConfig)
    monkeypatch.setattr(paddle.inference, "create_predictor", lambda config: FakePredictor(config, world))

    def empty_cache():
        world.gpu_caches_emptied += 1

    monkeypatch.setattr(paddle.device.cuda, "empty_cache", empty_cache)
    return world


def plan_for(files, precision="fp16", environment=ENVIRONMENT, **options):
    values = {**OPTIONS, **options}
    return tensorrt_routes.tensorrt_plan(files, precision, values["batch_size"], values["max_seq_length"], environment)


def start(files, precision="fp16", allow_no_engine=False, **options):
    values = {**OPTIONS, **options}
    return tensorrt_routes.start_tensorrt(
        files, precision, values["batch_size"], values["max_seq_length"], predictors.gpu_config, allow_no_engine
    )


# ---- the plan and its key --------------------------------------------------------------------------------------------
def test_each_format_takes_its_route_and_the_cache_key_names_everything_an_engine_depends_on(tmp_path):
    pir = plan_for(model_files(tmp_path, "model.json"))
    assert pir.route == "pir-trt"
    assert plan_for(model_files(tmp_path, "int8.pdmodel", quantized=True), "int8").route == "legacy"
    assert os.path.dirname(pir.cache_dir) == str(tmp_path / "model" / "tensorrt")
    assert pir.key["min"]["input_ids"] == [1, 1]
    assert pir.key["max"]["token_type_ids"] == [8, 64]
    assert pir.key["opt"]["input_ids"] == [8, 16]
    assert pir.key["params"]["name"] == "model.pdiparams"
    files = model_files(tmp_path, "model.json")
    others = [plan_for(files, environment={**ENVIRONMENT, field: "other"}) for field in ENVIRONMENT]
    others += [plan_for(files, "fp32"), plan_for(files, batch_size=16), plan_for(files, max_seq_length=128)]
    assert len({plan.cache_dir for plan in others} | {pir.cache_dir}) == len(others) + 1


def test_new_parameters_or_program_of_the_same_size_make_a_new_key(tmp_path):
    files = model_files(tmp_path, "model.json")
    before = plan_for(files).cache_dir
    os.utime(files.params, ns=(1, 1))
    after_params = plan_for(files).cache_dir
    os.utime(files.program, ns=(1, 1))
    assert len({before, after_params, plan_for(files).cache_dir}) == 3


def test_the_gpu_environment_names_paddle_cuda_cudnn_and_tensorrt(monkeypatch):
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: (8, 6, 1))
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: (8, 6, 1))
    monkeypatch.setattr(paddle.version, "cuda", lambda: "11.8")
    monkeypatch.setattr(paddle.version, "cudnn", lambda: "8.9.7")
    environment = tensorrt_routes.gpu_environment()
    assert environment["paddle"] == paddle.__version__
    assert environment["paddle_commit"] == paddle.version.commit
    assert (environment["cuda"], environment["cudnn"]) == ("11.8", "8.9.7")
    assert (environment["tensorrt_compile"], environment["tensorrt_runtime"]) == ("8.6.1", "8.6.1")


# ---- PIR-TRT: conversion and a self-contained cache -----------------------------------------------------------------
@pytest.mark.parametrize("engine_place", ["home", "save_dir"])
def test_pir_programs_are_converted_once_into_a_cache_that_holds_every_engine(tmp_path, gpu, engine_place):
    gpu.engine_place = engine_place
    files = model_files(tmp_path, "model.json")
    first = start(files)
    ((prefix, config, warmup),) = gpu.conversions
    assert prefix == os.path.join(files.directory, "model")
    assert config.precision_mode is PrecisionMode.FP16
    assert config.min_subgraph_size == tensorrt_routes.MIN_SUBGRAPH_SIZE
    inputs = {spec.name: spec for spec in config.inputs}
    assert inputs["input_ids"].min_input_shape == (1, 1)
    assert inputs["input_ids"].optim_input_shape == (8, 16)
    assert inputs["token_type_ids"].max_input_shape == (8, 64)
    assert all(spec.input_data_type == "int64" for spec in inputs.values())
    assert inputs["token_type_ids"].input_range == (0, 1)  # zeros whether or not a version accepts (0, 0)
    token_types = warmup[[spec.name for spec in config.inputs].index("token_type_ids")]
    assert all(not values.any() for values in token_types)  # token types 0, from a range randint accepts
    engines = tensorrt_routes.program_engine_paths(tensorrt_routes.cached_program(first.plan)[0])
    assert len(engines) == first.engines == 2
    assert all(path.startswith(os.path.join(first.plan.cache_dir, "engines") + os.sep) for path in engines)
    assert all(os.path.isfile(path) for path in engines)
    again = start(files)
    assert (first.built, again.built) == (True, False)
    assert len(gpu.conversions) == 1  # the second start reuses the converted program


def test_the_conversion_loads_the_parameters_into_a_scope_of_its_own_then_frees_gpu_memory(tmp_path, gpu):
    process_scope = paddle.static.global_scope()
    start(model_files(tmp_path, "model.json"))
    (conversion_scope,) = gpu.scopes
    assert conversion_scope is not process_scope
    assert paddle.static.global_scope() is process_scope
    assert gpu.gpu_caches_emptied == 1


def test_fp32_and_fp16_conversions_keep_their_own_engines_though_paddle_names_them_alike(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    fp32 = start(files, "fp32")
    start(files, "fp16")  # Paddle's home cache: the same engine file names, overwritten with fp16 engines
    engines = tensorrt_routes.program_engine_paths(tensorrt_routes.cached_program(fp32.plan)[0])
    assert all(open(path).read().startswith("engine FP32") for path in engines)
    assert start(files, "fp32").built is False


def test_a_cache_built_from_one_working_directory_serves_from_another(tmp_path, gpu, monkeypatch):
    gpu.engine_place = "relative"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    folder = tmp_path / "a" / "output" / "tnews" / "export"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{}")
    (folder / "model.pdiparams").write_text("params")
    relative = model_folder.ModelFiles(
        "output/tnews/export", "output/tnews/export/model.json", "output/tnews/export/model.pdiparams", False
    )
    start(relative)
    monkeypatch.chdir(tmp_path / "b")
    absolute = model_folder.ModelFiles(str(folder), str(folder / "model.json"), str(folder / "model.pdiparams"), False)
    served = start(absolute)  # the fake predictor opens every engine the program names, relative ones from here
    assert served.built is False
    (named,) = gpu.named_at_conversion
    assert not any(os.path.isabs(path) for path in named)  # convert named them relative to the first directory
    cached = tensorrt_routes.program_engine_paths(tensorrt_routes.cached_program(served.plan)[0])
    assert all(path.startswith(served.plan.cache_dir + os.sep) for path in cached)


def test_a_model_folder_reached_through_a_symbolic_link_shares_the_cache_of_its_real_path(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    os.symlink(files.directory, tmp_path / "link")
    link = str(tmp_path / "link")
    linked = model_folder.ModelFiles(
        link, os.path.join(link, "model.json"), os.path.join(link, "model.pdiparams"), False
    )
    through_link = start(linked)
    by_real_path = start(files)
    assert through_link.plan.cache_dir == by_real_path.plan.cache_dir
    assert (through_link.built, by_real_path.built, start(linked).built) == (True, False, False)
    assert len(gpu.conversions) == 1


def test_a_cache_that_lost_a_file_its_program_names_is_rebuilt(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    first = start(files)
    os.remove(tensorrt_routes.program_engine_paths(tensorrt_routes.cached_program(first.plan)[0])[0])
    assert start(files).built is True
    assert len(gpu.conversions) == 2


def test_a_copied_model_folder_builds_its_own_cache_instead_of_naming_the_originals_engines(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    start(files)
    shutil.copytree(files.directory, tmp_path / "copy")  # times kept: the same key
    copy = model_folder.ModelFiles(
        str(tmp_path / "copy"), str(tmp_path / "copy" / "model.json"), str(tmp_path / "copy" / "model.pdiparams"), False
    )
    copied = start(copy)
    assert copied.built is True
    engines = tensorrt_routes.program_engine_paths(tensorrt_routes.cached_program(copied.plan)[0])
    assert all(path.startswith(str(tmp_path / "copy")) for path in engines)


def test_a_foreign_or_unfinished_cache_is_rebuilt_never_used(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    first = start(files)
    key_file = os.path.join(first.plan.cache_dir, tensorrt_routes.KEY_FILE)
    manifest = json.load(open(key_file))
    json.dump({**manifest, "key": {**manifest["key"], "gpu": "another GPU"}}, open(key_file, "w"))
    assert start(files).built is True
    os.remove(key_file)
    assert start(files).built is True


def test_a_failed_conversion_leaves_no_cache_and_says_one_line(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")

    def failing_convert(model_path, config):
        os.makedirs(config.save_model_dir)
        raise RuntimeError("(PreconditionNotMet) TensorRT failed to build the engine\n  [Hint: deep inside]")

    sys.modules["paddle.tensorrt.export"].convert = failing_convert
    with pytest.raises(predictors.UserError, match=r"could not build or start .*TensorRT failed to build the engine$"):
        start(files)
    assert os.listdir(os.path.join(files.directory, "tensorrt")) == [".lock"]  # no cache, no staging left


def convert_raising(error):
    def convert(model_path, config):
        raise error

    return convert


def convert_writing_an_engine_attribute_without_its_value(model_path, config):
    ops = [{"#": "1.tensorrt_engine", "A": [{"AT": {"#": "0.a_str"}, "N": "engine_serialized_data"}]}]
    with open(config.save_model_dir + ".json", "w") as out:
        json.dump({"program": {"regions": [{"blocks": [{"ops": ops}]}]}}, out)


CONVERTER_FAILURES = {
    "TypeError": (convert_raising(TypeError("'NoneType' object is not subscriptable")), r"TypeError: 'NoneType'"),
    "AssertionError": (convert_raising(AssertionError()), r": AssertionError$"),
    "KeyError of an engine attribute": (convert_writing_an_engine_attribute_without_its_value, r"KeyError: 'D'$"),
    "ImportError from paddle.tensorrt": (None, r"ImportError: cannot import name 'Input'"),
}


@pytest.mark.parametrize("case", CONVERTER_FAILURES)
def test_any_error_of_the_converter_is_one_line_naming_the_model_folder(tmp_path, gpu, monkeypatch, case):
    convert, message = CONVERTER_FAILURES[case]
    if convert is None:
        # a paddle.tensorrt without what it should hold: `from paddle.tensorrt.export import Input` is an ImportError
        monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", types.ModuleType("paddle.tensorrt.export"))
    else:
        sys.modules["paddle.tensorrt.export"].convert = convert
    files = model_files(tmp_path, "model.json")
    with pytest.raises(predictors.UserError, match=message) as refused:
        start(files)
    assert "\n" not in str(refused.value)
    assert f"could not build or start the engines of {files.directory} " in str(refused.value)


def test_a_user_error_inside_the_start_passes_through_unchanged(tmp_path, gpu):
    gpu.engines = 0
    with pytest.raises(predictors.UserError, match=r"^--use_trt: TensorRT took no subgraph"):
        start(model_files(tmp_path, "model.json"))


def dead_builders_staging(plan, suffix, age_s=3600):
    """A staging folder beside the cache as a builder killed mid-build leaves it (its lock gone with it)."""
    folder = os.path.join(os.path.dirname(plan.cache_dir), f".tmp-{os.path.basename(plan.cache_dir)}-{suffix}")
    os.makedirs(os.path.join(folder, "engines"))
    past = time.time() - age_s
    os.utime(folder, (past, past))
    return folder


def test_a_killed_builders_staging_folder_is_removed_by_the_next_build(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    plan = plan_for(files, environment=tensorrt_routes.gpu_environment())
    stale, young = dead_builders_staging(plan, "deadbeef"), dead_builders_staging(plan, "youngone", age_s=0)
    assert start(files).built is True
    assert not os.path.exists(stale)
    assert os.path.isdir(young)  # younger than runtime.STALE_AFTER_S: perhaps a builder that has not yet locked it


def test_a_start_on_a_complete_cache_removes_stale_staging_when_no_build_holds_the_lock(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    plan = start(files).plan
    lock = os.path.join(os.path.dirname(plan.cache_dir), ".lock")
    stale = dead_builders_staging(plan, "deadbeef")
    with tensorrt_routes.exclusive_lock(lock):  # another key being built: this start neither waits nor cleans
        assert start(files).built is False
    assert os.path.isdir(stale)
    assert start(files).built is False
    assert not os.path.exists(stale)


def start_in_worker(files, results):
    try:
        results.put(("ok", start(files).built))
    except BaseException as error:  # reported to the test, whatever it is
        results.put(("error", repr(error)))


def test_workers_starting_together_on_a_cold_cache_convert_once(tmp_path, gpu):
    """serve.py --workers N: several processes start at once on a cold cache; one converts, the others wait for it
    and load what it built."""
    gpu.delay = 0.5
    files = model_files(tmp_path, "model.json")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=start_in_worker, args=(files, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == [("ok", False), ("ok", False), ("ok", True)]
    assert gpu.conversions_logged() == 1


# ---- the legacy route: enable_tensorrt_engine with collected shapes --------------------------------------------------
def legacy_predictor(files, **options):
    return predictors.PaddlePredictor(files, predictors.PredictorOptions(precision="int8", **{**OPTIONS, **options}))


def test_legacy_int8_programs_get_tensorrt_after_the_gpu_with_collected_shapes_and_static_engines(tmp_path, gpu):
    files = model_files(tmp_path, "int8.pdmodel", quantized=True)
    predictor = legacy_predictor(files)
    collection, builder, served = gpu.predictors
    assert collection.order() == ["disable_glog_info", "enable_use_gpu", "collect_shape_range_info"]
    shapes = [{name: list(values.shape) for name, values in feed.items()} for feed in collection.collected]
    assert shapes == [{"input_ids": s, "token_type_ids": s} for s in ([1, 1], [8, 16], [8, 16], [8, 64])]
    assert not any(feed["token_type_ids"].any() for feed in collection.collected)
    cache = predictor.tensorrt.plan.cache_dir
    for config in (builder, served):
        assert config.order() == [
            "disable_glog_info",
            "enable_use_gpu",
            "set_optim_cache_dir",
            "enable_tensorrt_engine",
            "enable_tuned_tensorrt_dynamic_shape",
            "tensorrt_engine_enabled",
        ]
    ((_, engine),) = served.called("enable_tensorrt_engine")
    assert engine["precision_mode"] == paddle.inference.PrecisionType.Int8
    assert (engine["use_static"], engine["use_calib_mode"], engine["max_batch_size"]) == (True, False, 8)
    assert served.called("set_optim_cache_dir") == [((cache,), {})]
    ((staging,), _) = builder.called("set_optim_cache_dir")[0]
    assert os.path.dirname(staging) == os.path.dirname(cache) != staging  # built aside, then renamed into place
    assert served.called("enable_tuned_tensorrt_dynamic_shape") == [
        ((os.path.join(cache, tensorrt_routes.SHAPE_FILE), True), {})
    ]
    assert os.path.isfile(os.path.join(cache, tensorrt_routes.SHAPE_FILE))
    assert predictor.engine.startswith("tensorrt int8 via legacy: 2 engines")
    assert predictor.run({name: np.ones((2, 5), "int64") for name in model_folder.EXPORT_INPUT_NAMES})[0].shape == (
        2,
        2,
    )
    again = legacy_predictor(files)
    assert (again.tensorrt.built, gpu.legacy_builds, len(gpu.predictors)) == (False, 2, 4)


def test_legacy_engines_built_at_the_first_run_are_cached_and_counted_too(tmp_path, gpu):
    gpu.legacy_build_at = "first run"
    files = model_files(tmp_path, "int8.pdmodel", quantized=True)
    assert legacy_predictor(files).tensorrt.engines == 2
    assert legacy_predictor(files).tensorrt.built is False
    assert gpu.legacy_builds == 2


def test_only_serialized_engine_files_count_as_legacy_engines(tmp_path, gpu):
    gpu.legacy_other_files = ["_optimized.pdmodel"]
    files = model_files(tmp_path, "int8.pdmodel", quantized=True)
    assert legacy_predictor(files).tensorrt.engines == 2


def test_a_file_beside_no_legacy_engine_does_not_hide_that_tensorrt_took_no_subgraph(tmp_path, gpu):
    gpu.legacy_engines, gpu.legacy_other_files = 0, ["_optimized.pdmodel"]
    with pytest.raises(predictors.UserError, match="TensorRT took no subgraph"):
        legacy_predictor(model_files(tmp_path, "int8.pdmodel", quantized=True))


def test_enable_tensorrt_engine_without_the_gpu_is_refused_not_claimed(tmp_path, gpu):
    files = model_files(tmp_path, "int8.pdmodel", quantized=True)
    plan = plan_for(files, "int8")
    config = paddle.inference.Config(files.program, files.params)  # GPU use never turned on
    with pytest.raises(predictors.UserError, match="did not enable TensorRT"):
        tensorrt_routes.configure_legacy_tensorrt(config, plan, plan.cache_dir)


@pytest.mark.parametrize("route", ["model.json", "int8.pdmodel"])
def test_a_program_tensorrt_takes_no_subgraph_of_is_an_error_unless_allowed(tmp_path, gpu, route):
    gpu.engines = gpu.legacy_engines = 0
    files = model_files(tmp_path, route, quantized=route.startswith("int8"))
    precision = "int8" if files.quantized else "fp16"
    with pytest.raises(predictors.UserError, match=r"TensorRT took no subgraph .*--allow_no_trt_engine"):
        start(files, precision)
    allowed = start(files, precision, allow_no_engine=True)
    assert allowed.engines == 0
    assert "took no TensorRT subgraph" in allowed.engine


# ---- PaddlePredictor's config, end to end for each GPU route ---------------------------------------------------------
def test_the_pir_route_serves_the_cached_program_on_the_gpu(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    predictor = predictors.PaddlePredictor(files, predictors.PredictorOptions(precision="fp16", **OPTIONS))
    (served,) = gpu.predictors
    assert served.files == tensorrt_routes.cached_program(predictor.tensorrt.plan)
    assert served.order() == ["disable_glog_info", "enable_use_gpu"]
    assert served.called("enable_use_gpu") == [((predictors.GPU_MEMORY_POOL_MB, 0), {})]  # fp16 is the engines'
    assert predictor.engine.startswith("tensorrt fp16 via pir-trt: 2 engines")


def test_gpu_without_tensorrt_runs_fp16_as_mixed_precision(tmp_path, gpu):
    files = model_files(tmp_path, "model.json")
    predictor = predictors.PaddlePredictor(
        files, predictors.PredictorOptions(precision="fp16", **{**OPTIONS, "use_trt": False})
    )
    (served,) = gpu.predictors
    half = paddle.inference.PrecisionType.Half
    assert served.called("enable_use_gpu") == [((predictors.GPU_MEMORY_POOL_MB, 0, half), {})]
    assert served.gpu and not served.tensorrt
    assert predictor.engine == "paddle-inference gpu fp16 mixed precision"


def test_the_fakes_are_as_strict_as_paddle():
    config = RecordingConfig()
    with pytest.raises(TypeError):
        config.enable_tensorrt_engine(max_batchsize=8)
    with pytest.raises(AttributeError):
        config.enable_tensorrt()
    with pytest.raises(TypeError):
        Input(min_shape=(1, 1))


# ---- what the machine must have --------------------------------------------------------------------------------------
def check(precision, use_trt, quantized, device="gpu", program="model.json"):
    options = predictors.PredictorOptions(precision=precision, **{**OPTIONS, "use_trt": use_trt, "device": device})
    predictors.PaddlePredictor.check(
        options, model_folder.ModelFiles("MODEL", f"MODEL/{program}", "MODEL/p", quantized)
    )


def test_gpu_refusals_and_what_passes(gpu):
    check("fp16", use_trt=False, quantized=False)  # GPU mixed precision: documented, allowed
    check("fp16", use_trt=True, quantized=False)
    check("int8", use_trt=True, quantized=True, program="int8.pdmodel")
    with pytest.raises(
        predictors.UserError, match=r"TensorRT int8 needs an int8 model with its scales; make one with compress_\*\.py"
    ):
        check("int8", use_trt=True, quantized=False)
    with pytest.raises(predictors.UserError, match=r"int8 models run on GPUs through TensorRT: add --use_trt"):
        check("int8", use_trt=False, quantized=True)
    with pytest.raises(predictors.UserError, match=r"is an int8 model: serve it with --precision int8"):
        check("fp16", use_trt=True, quantized=True)


def raises_runtime_error():
    raise RuntimeError("(PreconditionNotMet) The third-party dynamic library (libnvinfer.so) is not configured")


MISSING = {
    "no tensorrt in the build": ({"get_trt_compile_version": lambda: (0, 0, 0)}, None, "compiled without it"),
    "no libnvinfer": ({"get_trt_runtime_version": raises_runtime_error}, None, r"`pip install tensorrt==8\.6\.1`"),
    "libnvinfer reports nothing": ({"get_trt_runtime_version": lambda: (0, 0, 0)}, None, r"libnvinfer\.so\.8"),
    "no tensorrt package": ({}, None, r"the tensorrt Python package, which PIR-TRT .* imports"),
    "another tensorrt package": ({}, types.SimpleNamespace(__version__="10.0.1"), r"it has 10\.0\.1"),
    "a tensorrt package of another minor": ({}, types.SimpleNamespace(__version__="8.5.3"), r"TensorRT 8\.6 \(it has"),
    "libnvinfer of another major": (
        {"get_trt_runtime_version": lambda: (10, 0, 1)},
        types.SimpleNamespace(__version__="10.0.1"),
        r"the TensorRT 8\.6\.1 library in place of the TensorRT 10\.0\.1 one it loads",
    ),
}


@pytest.mark.parametrize("case", MISSING)
def test_what_tensorrt_lacks_is_one_line_naming_what_to_install(gpu, monkeypatch, case):
    getters, package, message = MISSING[case]
    for name, getter in getters.items():
        monkeypatch.setattr(paddle.inference, name, getter)
    monkeypatch.setitem(sys.modules, "tensorrt", package)  # None: `import tensorrt` is an ImportError
    with pytest.raises(predictors.UserError, match=message) as refused:
        check("fp16", use_trt=True, quantized=False)
    assert "\n" not in str(refused.value)


def test_legacy_programs_need_no_tensorrt_python_package(gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    check("int8", use_trt=True, quantized=True, program="int8.pdmodel")


def test_legacy_programs_refuse_a_tensorrt_library_of_another_major_than_paddles(gpu, monkeypatch):
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: (10, 0, 1))
    with pytest.raises(predictors.UserError, match=r"paddle was compiled against TensorRT 8\)"):
        check("int8", use_trt=True, quantized=True, program="int8.pdmodel")


def test_a_tensorrt_package_and_library_of_one_major_minor_pass_whatever_their_patch(gpu, monkeypatch):
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: (8, 6, 0))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1.post1"))
    check("fp16", use_trt=True, quantized=False)


def test_a_missing_tensorrt_library_stops_infer_with_one_line(tnews_run, gpu, monkeypatch, capsys):
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", raises_runtime_error)
    argv = ["--model_path", os.path.join(tnews_run, "export"), "--dev_file", clue_file("tnews", "dev")]
    status, stderr = run_cli(infer.main, [*argv, "--device", "gpu", "--use_trt"], capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "the TensorRT 8.6.1 library" in error_lines(stderr)[0]
    assert "Traceback" not in stderr
    assert gpu.predictors == []  # refused before any GPU work


def test_a_cpu_build_refuses_gpu_routes_in_one_line(tnews_run, capsys):
    model = os.path.join(tnews_run, "export")
    cases = {
        ("--device", "gpu", "--use_trt"): "--device gpu needs paddlepaddle-gpu and a visible GPU",
        (
            "--use_trt",
            "--precision",
            "fp16",
        ): "--use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu",
        ("--precision", "fp16"): "--precision fp16 runs on GPUs",
    }
    for extra, message in cases.items():
        status, stderr = run_cli(
            infer.main, ["--model_path", model, "--dev_file", clue_file("tnews", "dev"), *extra], capsys
        )
        assert status == 2, (extra, stderr)
        assert message in error_lines(stderr)[0], (extra, stderr)


def test_the_report_says_which_engine_ran(tnews_run):
    report = infer.main(
        [
            "--model_path",
            os.path.join(tnews_run, "export"),
            "--dev_file",
            clue_file("tnews", "dev"),
            "--num_threads",
            "1",
        ]
    )
    assert report["engine"] == "paddle-inference cpu onednn fp32"
    assert report["use_trt"] is False


def test_the_gpu_check_covers_every_model_precision_and_route(tmp_path):
    from benchmarks import gpu_check

    (tmp_path / "compress").mkdir()
    pruned = dataclasses.replace(sample_candidate("P"), kind="pruned float", path="P")
    int8 = dataclasses.replace(sample_candidate("Q", precision="int8"), path="Q")
    report = sample_report(candidates=(pruned, int8), best_int8="R", tensorrt_int8="Q")
    model_folder.write_report(str(tmp_path / "compress" / "compress_report.json"), report)
    rows = list(gpu_check.matrix(str(tmp_path)))
    export = str(tmp_path / "export")
    assert rows == [
        ("export", export, "fp32", False),
        ("export", export, "fp16", False),
        ("export", export, "fp32", True),
        ("export", export, "fp16", True),
        ("pruned", "P", "fp32", False),
        ("pruned", "P", "fp16", False),
        ("pruned", "P", "fp32", True),
        ("pruned", "P", "fp16", True),
        ("tensorrt int8", "Q", "int8", True),
    ]


def test_use_trt_int8_serves_the_reports_paddle_int8_candidate_not_the_fastest_int8(tmp_path, monkeypatch):
    """The fastest int8 candidate on a CPU may be ONNX Runtime's or NNCF's, which TensorRT cannot run: with --use_trt
    the default model is the report's tensorrt_int8 (a Paddle int8 program), and a report without one is one line."""
    monkeypatch.chdir(tmp_path)
    compress_dir = tmp_path / "output" / "tnews" / "compress"
    compress_dir.mkdir(parents=True)
    report = str(compress_dir / "compress_report.json")
    model_folder.write_report(report, sample_report(best_int8="W/onnxruntime_int8", tensorrt_int8="W/hist8_1"))
    assert deployment.default_model_path("tnews", "int8") == "W/onnxruntime_int8"
    assert deployment.default_model_path("tnews", "int8", use_trt=True) == "W/hist8_1"
    model_folder.write_report(report, sample_report(best_int8="W/onnxruntime_int8", tensorrt_int8=None))
    with pytest.raises(
        predictors.UserError,
        match=r"has no Paddle int8 candidate \(what TensorRT runs\) within its "
        r"--max_metric_drop",
    ):
        deployment.default_model_path("tnews", "int8", use_trt=True)
