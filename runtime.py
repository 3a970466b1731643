"""What every program of the suite runs on: the errors a user can cause (one line, exit status 2), logging, atomic
writes of files and folders, and the description of the machine that measurements record.

Imports nothing of the suite: every other module may import it.
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Callable, Sequence

logger = logging.getLogger("ernie_suite")


# ---- errors a user can cause ---------------------------------------------------------------------------------------
class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError, or an error of the operating system about a file (unreadable, read-only,
    full disk, a folder where a file was expected), becomes one 'error: ...' line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if error.filename is None:  # not about a file: a real failure, with its traceback
            raise
        print(f"error: {os_error_line(error)}", file=sys.stderr)
        sys.exit(2)


# what to do about an operating-system error on a file, by errno
OS_ERROR_ADVICE = {
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "the file system is read-only: choose a writable place",
    errno.ENOSPC: "the disk is full: free some space or choose another place",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it already exists (another run may be writing it): choose another name",
    errno.EIO: "the device failed to read or write it",
}


def os_error_line(error: OSError) -> str:
    advice = OS_ERROR_ADVICE.get(error.errno, "")
    return f"{error.filename}: {error.strerror or error}" + (f" ({advice})" if advice else "")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_json_file(path: str, option: str):
    """One JSON document; a missing file, non-UTF-8 bytes or invalid JSON is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{option}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None


# ---- logging -------------------------------------------------------------------------------------------------------
def setup_logging(verbose: bool = True) -> None:
    """The suite's log lines (INFO, or WARNING only in processes that should not log, like extra ranks)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# ---- atomic writes -------------------------------------------------------------------------------------------------
def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def write_json_lines_atomic(path: str, rows: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_text_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside path, then rename: readers never see a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary directory beside path; on success it replaces path, on failure it is removed."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    os.chmod(temporary, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories
    try:
        yield temporary
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_entries(path: str, overwrite: bool):
    """Like atomic_directory, but into a folder that may already hold other things (upstream compresses into
    ./): the staged entries move in at the end, never replacing an existing one unless overwrite. A clash is
    found before anything moves, so the folder gets all of the entries or none."""
    if not os.path.isdir(path):
        with atomic_directory(path) as staging:
            yield staging
        return
    staging = tempfile.mkdtemp(dir=path, prefix=".tmp-staging-")
    try:
        yield staging
        entries = sorted(os.listdir(staging))
        clashes = [name for name in entries if os.path.lexists(os.path.join(path, name))]
        if clashes and not overwrite:
            raise UserError(
                f"{path} already holds {', '.join(clashes[:5])}; pass --overwrite_output_dir to replace "
                "them or choose another --output_dir"
            )
        for name in entries:
            target = os.path.join(path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)
            os.rename(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- the machine measurements record -------------------------------------------------------------------------------
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_model_and_flags() -> tuple:
    """(the CPU's model name, the CPU_FLAGS it has), from /proc/cpuinfo."""
    flags, model = set(), ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    return model, [flag for flag in CPU_FLAGS if flag in flags]


def machine_details() -> dict:
    """The CPU, its flags that matter to these kernels, and the library versions: recorded with every measurement,
    since speeds compare only within one machine."""
    import importlib.metadata
    import platform

    import numpy as np
    import onnxruntime
    import paddle

    model, flags = cpu_model_and_flags()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "flags": flags,
        "paddlepaddle": paddle.__version__,
        "paddlenlp": importlib.metadata.version("paddlenlp"),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
