"""What every program of the suite runs on: the errors a user can cause (one line, exit status 2), logging, atomic
writes of files and folders, one writer per output (a lock; dead runs' staging folders removed), and the
description of the machine that measurements record.

Imports nothing of the suite: every other module may import it.
"""

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

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


PADDLE_SUMMARY = "Error Message Summary:"  # Paddle's C++ errors: a C++ traceback, then this, then the message
PADDLE_SOURCE = re.compile(r"\s*\[Hint: [^\]]*\]|\s*\(at /[^()]*\)")  # "[Hint: ...]", "(at /paddle/...cc:63)"


def first_line(error: BaseException) -> str:
    """The error's message in one line: for Paddle's C++ errors the summary's first line, without the hint and the
    source path of the build machine (which told a user nothing, and /health showed them)."""
    text = str(error).strip()
    if PADDLE_SUMMARY in text:
        text = text.split(PADDLE_SUMMARY, 1)[1].strip().lstrip("-").strip()
    line = PADDLE_SOURCE.sub("", text.splitlines()[0]).strip() if text else ""
    return line or type(error).__name__


# ---- reading the user's files ---------------------------------------------------------------------------------------
UTF8_BOM = b"\xef\xbb\xbf"  # some editors start UTF-8 files with it: dropped


def check_file(path: str, option: str) -> None:
    """A path to read as a file: missing, a folder, or not a regular file (a FIFO, a device) is one UserError (a
    folder on the way that may not be entered is the OSError it is, which run_cli prints as one line)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{option}: file not found: {path}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{option}: {path} is a folder: give a file")
    if not stat.S_ISREG(mode):
        raise UserError(f"{option}: {path} is not a regular file (a FIFO or a device): give a file")


def read_json_file(path: str, option: str):
    """One JSON document (a UTF-8 BOM allowed); a missing file, a folder, non-UTF-8 bytes or invalid JSON is a
    one-line UserError."""
    check_file(path, option)
    with open(path, "rb") as handle:
        text = decoded_text(handle.read(), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON ({json_error_reason(error)})") from None


def json_error_reason(error: json.JSONDecodeError, line: bool = False) -> str:
    """What the JSON parser found wrong and where (its 'Invalid control character at' loses the dangling 'at')."""
    where = f"line {error.lineno} column {error.colno}" if line else f"column {error.colno}"
    return f"{error.msg.removesuffix(' at')} at {where}"


def decoded_text(data: bytes, path: str, first_line: int = 1, offset: int = 0) -> str:
    """Bytes of path from byte offset (line first_line on) as text, a BOM at the file's start dropped; invalid UTF-8
    is one UserError naming the line and the byte of the file where it is."""
    if offset == 0 and data.startswith(UTF8_BOM):
        data, offset = data[len(UTF8_BOM) :], len(UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        raise UserError(
            f"{path}: not UTF-8 text (line {line}: {error.reason} at byte {offset + error.start} of the file)"
        ) from None


def file_lines(path: str, option: str, max_line_bytes: Optional[int] = None):
    """(line number, text without its line end, bytes read so far) of each line of a UTF-8 text file, read lazily
    (see decoded_text). With max_line_bytes, a longer line is one UserError before it is read whole: its memory, and
    the tokenizer's on it, stay bounded."""
    check_file(path, option)
    with open(path, "rb") as handle:
        offset = 0
        for number in itertools.count(1):
            raw = handle.readline(max_line_bytes + 2) if max_line_bytes else handle.readline()  # + 2: '\r\n'
            if not raw:
                return
            if max_line_bytes and len(raw.rstrip(b"\r\n")) > max_line_bytes:
                raise UserError(
                    f"{path}:{number}: the line is longer than {max_line_bytes} bytes (--max_line_bytes): split it "
                    "or raise the limit"
                )
            yield number, decoded_text(raw, path, number, offset).rstrip("\r\n"), offset + len(raw)
            offset += len(raw)


# ---- logging -------------------------------------------------------------------------------------------------------
def setup_logging(verbose: bool = True) -> None:
    """The suite's log lines (INFO, or WARNING only in processes that should not log, like extra ranks)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.WARNING):
    """A library's logger at level or above, as it was (its lines below it dropped) inside; as it was after."""
    library = logging.getLogger(name)
    before = library.level
    library.setLevel(max(level, library.getEffectiveLevel()))
    try:
        yield
    finally:
        library.setLevel(before)


# ---- atomic writes -------------------------------------------------------------------------------------------------
def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def write_json_lines_atomic(path: str, rows: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def errors_of(path: Optional[str], unnamed_only: bool = False):
    """Operating-system errors inside are path's (None: left as they are): a write to a full disk names no file,
    and a temporary or lock file beside path is not what the user gave. unnamed_only: only those naming no file."""
    try:
        yield
    except OSError as error:
        if path is None or error.errno is None or (unnamed_only and error.filename is not None):
            raise
        raise OSError(error.errno, error.strerror, path) from None


def write_text_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside path, then rename: readers never see a half-written file (on a full or
    read-only disk, nothing is left behind and the error names path)."""
    with errors_of(path):
        write_text_beside(path, text)


def write_text_beside(path: str, text: str) -> None:
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


def split_output(path: str) -> tuple:
    """(parent folder, name) of an output path, symbolic links resolved (one output, one lock, however spelt)."""
    real = os.path.realpath(path)
    return os.path.dirname(real), os.path.basename(real)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a staging folder beside path; on success it takes path's place in one step (an old tree at path is kept
    until the new one is in place, then removed); on failure it is removed and path is as it was."""
    parent, name = split_output(path)
    os.makedirs(parent, exist_ok=True)
    with staging_folder(parent, f".tmp-{name}-") as staging:
        yield staging
        replace_path(staging, path)


@contextlib.contextmanager
def atomic_entries(path: str, overwrite: bool):
    """Like atomic_directory, but into a folder that may already hold other things (upstream compresses into
    ./): the staged entries move in at the end, never replacing an existing one unless overwrite. A clash is
    found before anything moves. A folder that holds nothing but what is replaced is replaced whole, in one step;
    otherwise the entries are swapped and a failure puts the old ones back: the folder gets all of the entries
    or none, and the old ones stay until the new ones are in place. The writer holds path's output_lock
    throughout (a second one refuses)."""
    with output_lock(path, "--output_dir"), staged_entries(path) as staging:
        yield staging
        entries = sorted(os.listdir(staging))
        clashes = [name for name in entries if os.path.lexists(os.path.join(path, name))]
        if clashes and not overwrite:
            raise UserError(
                f"{path} already holds {', '.join(clashes[:5])}; pass --overwrite_output_dir to replace "
                "them or choose another --output_dir"
            )
        if not os.path.lexists(path) or replaces_whole_folder(path, staging, entries):
            replace_path(staging, path)
        else:
            swap_entries(staging, path, entries)


def staged_entries(path: str):
    """The staging folder of an output folder: beside it where its parent is writable (then it can take the
    folder's place whole), else inside it."""
    parent, name = split_output(path)
    if not os.path.isdir(path):
        os.makedirs(parent, exist_ok=True)
    if not os.path.isdir(path) or os.access(parent, os.W_OK):
        return staging_folder(parent, f".tmp-{name}-")
    return staging_folder(path, ".tmp-staging-")


def replaces_whole_folder(path: str, staging: str, entries: Sequence[str]) -> bool:
    """Whether the staged entries replace everything path holds (never the working directory or a folder above
    it, which would leave this process and the user's shell in the removed tree)."""
    real = os.path.realpath(path)
    if os.path.dirname(staging) == real or os.path.commonpath([os.getcwd(), real]) == real:
        return False
    return {name for name in os.listdir(path) if not STAGING_NAME.match(name)} <= set(entries)


def swap_entries(staging: str, path: str, entries: Sequence[str]) -> None:
    """Move the staged entries into path, each old one moved aside first (into the staging folder, removed with
    it); a failure moves everything back. Plain files (a report naming the folders) leave first and arrive last."""
    order = sorted(entries, key=lambda name: (os.path.isfile(os.path.join(staging, name)), name))
    aside = tempfile.mkdtemp(dir=staging, prefix=".old-")
    moved_out, moved_in = [], []
    try:
        for name in reversed(order):
            if os.path.lexists(os.path.join(path, name)):
                os.rename(os.path.join(path, name), os.path.join(aside, name))
                moved_out.append(name)
        for name in order:
            os.rename(os.path.join(staging, name), os.path.join(path, name))
            moved_in.append(name)
    except BaseException:
        for name in reversed(moved_in):
            os.rename(os.path.join(path, name), os.path.join(staging, name))
        for name in reversed(moved_out):
            os.rename(os.path.join(aside, name), os.path.join(path, name))
        raise


def replace_path(new: str, path: str) -> None:
    """Put new at path in one rename; over an existing path, in one exchange (Linux's renameat2), which leaves the
    old tree at new for the caller to remove. Where the file system cannot exchange: path moved aside (to new's name
    + '-old'), new moved in, and the old tree moved to new's name; a failure puts path back."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if exchange_paths(new, path):
        return
    aside = new + "-old"
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)
        raise
    os.rename(aside, new)


def exchange_paths(first: str, second: str) -> bool:
    """Swap two paths atomically (renameat2 with RENAME_EXCHANGE); False where the system or file system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


# ---- staging folders: locked while their run lives, removed once it is dead ----------------------------------------
STAGING_NAME = re.compile(r"^\.tmp-.+-[A-Za-z0-9_]{8}(-old)?$")  # what mkdtemp names staging folders here
STALE_AFTER_S = 30  # a staging folder is locked a moment after it is made: a younger one is never taken for stale


@contextlib.contextmanager
def staging_folder(folder: str, prefix: str):
    """A new folder, locked while this process lives (so that no other run takes it for a dead run's), removed on
    the way out if still there (it was not moved into place, or it holds the tree it replaced)."""
    staging = tempfile.mkdtemp(dir=folder, prefix=prefix)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories
    descriptor = lock_folder(staging)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if descriptor is not None:
            os.close(descriptor)


def lock_folder(path: str) -> Optional[int]:
    """A descriptor holding an exclusive flock on a folder; None when another process holds it (or the file system
    cannot lock folders)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_staging(path: str) -> None:
    """Remove the staging folders of dead runs beside and inside the output path (a killed compression's is large):
    those whose lock is free, older than STALE_AFTER_S. A tree that a dead run had moved aside while replacing
    path is put back where path is missing (its own '-old' folders only: its lock is held by the caller)."""
    parent, name = split_output(path)
    for folder in (parent, os.path.realpath(path)):
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            candidate = os.path.join(folder, entry)
            if not STAGING_NAME.match(entry) or os.path.islink(candidate) or not os.path.isdir(candidate):
                continue
            if entry.endswith("-old"):
                if folder == parent and entry.startswith(f".tmp-{name}-"):
                    restore_or_remove_aside(candidate, path)
            elif time.time() - os.path.getmtime(candidate) > STALE_AFTER_S:
                remove_if_unlocked(candidate)


def remove_if_unlocked(folder: str) -> None:
    descriptor = lock_folder(folder)
    if descriptor is None:
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed %s, the staging folder of a run that stopped before it finished", folder)
    finally:
        os.close(descriptor)


def restore_or_remove_aside(aside: str, path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(aside, path)
        logger.warning("put %s back: a run stopped while replacing it", path)


# ---- one writer per output -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(path: Optional[str], option: str):
    """Hold the lock of an output (a file or folder; None: nothing to lock) while writing it, so that a second run
    on it refuses with one line naming the first (its pid). The lock is an flock on a file beside the output
    (.<name>.lock; inside an existing output folder whose parent is read-only), which the operating system releases
    when the process ends, however it ends. Holding it, the staging folders of dead runs are removed."""
    if path is None:
        yield
        return
    with errors_of(path):
        descriptor = open_lock_file(path)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
            raise UserError(
                f"{option} {path} is being written by another run ({holder or 'which has not yet written its pid'}); "
                f"wait for it to finish or choose another {option}"
            ) from None
        except OSError as error:
            logger.warning("%s cannot be locked (%s): no check for another run writing it", path, error)
        with contextlib.suppress(OSError):  # who holds it, for a refusal's message (a full disk cannot say)
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}, started {time.ctime()}".encode(), 0)
        remove_stale_staging(path)
        yield
    finally:
        os.close(descriptor)


def open_lock_file(path: str) -> int:
    """A descriptor of the output's lock file: .<name>.lock beside it, or .output.lock inside an existing output
    folder whose parent cannot hold it."""
    parent, name = split_output(path)
    os.makedirs(parent, exist_ok=True)
    try:
        return os.open(os.path.join(parent, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.path.isdir(path):
            raise
        return os.open(os.path.join(path, ".output.lock"), os.O_RDWR | os.O_CREAT, 0o666)


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
