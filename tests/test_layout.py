"""The module layout the suite promises: imports run one way (scripts -> concern modules -> utils.py), no
module holds most of the code, and every task list a user reads comes from the task registry."""

import ast
import os
import re

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCERN_MODULES = ("arguments", "model_io", "trainer_suite", "predictors", "compression", "serving")
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
# what each concern module may import, as its opening docstring says
ALLOWED_IMPORTS = {
    "utils": set(),
    "arguments": {"utils"},
    "model_io": {"utils"},
    "trainer_suite": {"arguments", "model_io", "utils"},
    "predictors": {"arguments", "model_io", "utils"},
    "compression": {"arguments", "model_io", "predictors", "utils"},
    "serving": {"model_io", "predictors", "utils"},
}


def project_imports(module: str) -> set:
    tree = ast.parse(open(os.path.join(ROOT, f"{module}.py"), encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & (set(ALLOWED_IMPORTS) | set(SCRIPTS))


def test_imports_run_one_way_from_scripts_to_concern_modules_to_utils():
    for module, allowed in ALLOWED_IMPORTS.items():
        assert project_imports(module) <= allowed, f"{module} imports {sorted(project_imports(module) - allowed)}"


def test_no_python_file_holds_more_than_40_percent_of_the_code():
    files = [os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith(".py")]
    files += [
        os.path.join(ROOT, "benchmarks", name)
        for name in os.listdir(os.path.join(ROOT, "benchmarks"))
        if name.endswith(".py")
    ]
    counts = {path: sum(1 for line in open(path, encoding="utf-8") if line.strip()) for path in files}
    largest = max(counts, key=counts.get)
    assert counts[largest] <= 0.4 * sum(counts.values()), (
        f"{largest}: {counts[largest]} of {sum(counts.values())} lines"
    )


def registry_task_names() -> set:
    return set(utils.ALL_TASKS) | {utils.CUSTOM_TASK}


def test_the_readme_task_list_is_the_registry():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    line = next(line for line in readme.splitlines() if line.startswith("| `--task_name`"))
    assert set(re.findall(r"`([a-z0-9_]+)`", line.split("|")[2])) == registry_task_names()


def test_help_texts_list_every_registered_task(capsys):
    import arguments

    help_text = arguments.task_names_help()
    assert set(re.findall(r"[a-z0-9_]+(?=[,; (])", help_text)) - {"py"} >= registry_task_names()
    for name, task in utils.ALL_TASKS.items():
        script = utils.FAMILIES[task.family].script
        assert re.search(rf"\b{name}\b[^;]*\({re.escape(script)}\)", help_text), (name, help_text)
