"""The module layout the suite promises, as checks that fail the day it breaks: imports run one way along the layers
each module's docstring names, nothing outside the family table branches on a family, no module but model_folder.py
spells a key of the files between compression and deployment, and every task list a user reads is the registry."""

import ast
import dataclasses
import os
import re

import model_folder
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = (
    "run_seq_cls",
    "run_token_cls",
    "run_qa",
    "compress_seq_cls",
    "compress_token_cls",
    "compress_qa",
    "infer",
    "serve",
)
# what each concern module may import (its opening docstring says the same: checked below)
ALLOWED_IMPORTS = {
    "runtime": set(),
    "utils": {"runtime"},
    "model_folder": {"runtime"},
    "arguments": {"runtime", "utils"},
    "model_io": {"model_folder", "runtime", "utils"},
    "tensorrt_routes": {"model_folder", "runtime"},
    "predictors": {"arguments", "model_folder", "runtime", "tensorrt_routes"},
    "deployment": {"arguments", "model_folder", "predictors", "runtime", "utils"},
    "dynabert": {"model_io", "predictors", "runtime", "utils"},
    "quantization": {"dynabert", "model_folder", "model_io", "predictors", "runtime", "utils"},
    "students": {"dynabert", "model_io", "runtime", "utils"},
    "vocabulary": {"runtime"},
    "compression": {"arguments", "dynabert", "model_folder", "model_io", "predictors", "quantization", "runtime"}
    | {"students", "utils", "vocabulary"},
    "trainer_suite": {"arguments", "model_io", "runtime", "utils"},
    "serving": {"model_io", "predictors", "runtime", "utils"},
}
FAMILY_NAMES = set(utils.FAMILIES)
# keys of task.json and compress_report.json that no other file uses for anything else
CONTRACT_KEYS = {
    item.name
    for cls in (model_folder.TaskFile, model_folder.Candidate, model_folder.CompressionReport, model_folder.Serving)
    for item in dataclasses.fields(cls)
} - {"path", "backend", "precision", "metrics", "kind", "task", "source", "metric", "parameters", "task_name"}
CONTRACT_KEYS -= {"sequences_per_second", "latency_ms_p50"}  # also infer.py --perf's keys, which benchmarks read
CONTRACT_KEYS -= {"candidates"}  # also a field of CHID's data files, which utils.py reads
CONTRACT_KEYS |= {model_folder.VERSION_FIELD}


def source_files(include_tests: bool = False):
    folders = ["", "benchmarks"] + (["tests"] if include_tests else [])
    for folder in folders:
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def parsed(path: str) -> ast.Module:
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return ast.parse(handle.read())


def project_imports(module: str) -> set:
    names = set()
    for node in ast.walk(parsed(f"{module}.py")):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & (set(ALLOWED_IMPORTS) | set(SCRIPTS))


def test_imports_run_one_way_from_scripts_through_the_layers():
    for module, allowed in ALLOWED_IMPORTS.items():
        assert project_imports(module) <= allowed, f"{module} imports {sorted(project_imports(module) - allowed)}"


def test_each_module_docstring_names_the_modules_it_imports():
    for module in ALLOWED_IMPORTS:
        docstring = ast.get_docstring(parsed(f"{module}.py")) or ""
        named = set(re.findall(r"\b([a-z_]+)\.py\b", docstring.split("Imports", 1)[-1]))
        assert project_imports(module) <= named, f"{module}.py's docstring omits {project_imports(module) - named}"


def family_name_constants(node) -> list:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in FAMILY_NAMES]


def names_a_family(node) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return "family" in name.lower()


def family_branches(path: str) -> list:
    """Comparisons of a family with a family's name (family == "qa", task.family in ("seq_cls", ...))."""
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(names_a_family(side) for side in sides) and any(family_name_constants(side) for side in sides):
                found.append(f"{path}:{node.lineno}")
    return found


def test_no_code_branches_on_a_family_outside_the_family_table():
    branches = [where for path in source_files(include_tests=True) for where in family_branches(path)]
    assert branches == []


def test_the_branch_check_finds_a_family_branch(tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text('if task.family == "qa":\n    pass\nif family in ("seq_cls",):\n    pass\n')
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert family_branches("probe.py") == ["probe.py:1", "probe.py:3"]


def contract_key_reads(path: str) -> list:
    """Subscripts and .get() calls with a task.json or compress_report.json key: x["best"], x.get("serving")."""
    found = []
    for node in ast.walk(parsed(path)):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            key = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if key in CONTRACT_KEYS:
            found.append(f"{path}:{node.lineno} {key}")
    return found


def test_no_module_but_model_folder_reads_a_contract_key():
    """benchmarks/tables.py renders the benchmarks' own results files, whose keys the benchmarks choose."""
    reads = [
        where
        for path in source_files()
        if path not in ("model_folder.py", os.path.join("benchmarks", "tables.py"))
        for where in contract_key_reads(path)
    ]
    assert reads == []


def test_the_contract_check_finds_a_key_read(tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text('best = report["best_int8"]\nserving = info.get("serving")\n')
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert contract_key_reads("probe.py") == ["probe.py:1 best_int8", "probe.py:2 serving"]


def registry_task_names() -> set:
    return set(utils.ALL_TASKS) | {utils.CUSTOM_TASK}


def test_the_readme_task_list_is_the_registry():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    line = next(line for line in readme.splitlines() if line.startswith("| `--task_name`"))
    assert set(re.findall(r"`([a-z0-9_]+)`", line.split("|")[2])) == registry_task_names()


def test_help_texts_list_every_registered_task():
    import arguments

    help_text = arguments.task_names_help()
    assert set(re.findall(r"[a-z0-9_]+(?=[,; (])", help_text)) - {"py"} >= registry_task_names()
    for name, task in utils.ALL_TASKS.items():
        assert re.search(rf"\b{name}\b[^;]*\({re.escape(task.family.script)}\)", help_text), (name, help_text)


def test_every_task_row_belongs_to_a_family_of_the_table():
    for task in utils.ALL_TASKS.values():
        assert utils.FAMILIES[task.family.name] is task.family
