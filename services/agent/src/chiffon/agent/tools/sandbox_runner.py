"""The python tool's child: puts up the fences, then runs one snippet (a script, never imported).

The agent starts it as ``python -I -S -B sandbox_runner.py run CPU MEMORY FILE PROCESSES
UID GID NETWORK CHANNEL [SITE_DIR...]`` with the task's payload (``marshal`` of
``(code, inputs)``, written by the agent) on stdin; the snippet's process answers with one
JSON object on fd CHANNEL.

Every fence is up before a byte of the task is compiled: the rlimits, a new network
namespace (NETWORK ``isolate``: required, ``try``: if the OS allows, ``host``: none), then
(UID >= 0, the agent is root) a fork: the snippet's process drops the agent's groups, takes
UID/GID and no_new_privs (a setuid binary gains nothing), and runs; this process, the guard,
stays root and is its subreaper, so when it ends every process it left (even one that left
the process group with setsid) comes back here and is killed (kill(-1) as UID reaches
exactly UID's processes, atomically against a fork in flight) and reaped. Then the guard
exits with a code that says what the snippet's process did (GUARD_*), which the task cannot
forge. A fence that cannot be put up answers ``{"fence": ...}`` and exits FENCE_FAILED with
nothing run. Only this prologue runs as the agent's user, and it reads nothing but the
standard library (``-I -S``: no environment, no site, no current directory).

``sandbox_runner.py sweep UID GID`` kills every process of UID: the agent's fallback when
the guard itself was killed (a wall-time timeout kills the whole process group).

Imports are kept to what is cheap (marshal, resource, _ctypes): ``json`` would cost ~8 ms of
a task because it imports ``re``, so the result is written by the small encoder below and
parsed by the agent; ``traceback`` is imported only when a snippet raised.
"""

import marshal
import os
import sys

#: Exit codes: the runner's (a fence could not be put up: nothing ran), and the guard's
#: (what the snippet's process did; 64 + N: killed by signal N).
FENCE_FAILED = 3
GUARD_EXITED_NONZERO = 2
GUARD_SIGNALLED = 64
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
#: Audit events that start a process: a BlockingIOError just after one is the process limit.
SPAWN_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen"}
)
#: How much of a traceback goes back in the answer (its last lines).
TRACEBACK_LINES = 20
TRACEBACK_CHARS = 4000


def answer(channel: int, document: str) -> None:
    data = document.encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(channel, data) :]


def escape(text: str) -> str:
    # json's own C string encoder, the _json extension alone (json's Python half imports re).
    import _json  # noqa: PLC0415

    return _json.encode_basestring_ascii(text)


def encode(value: object, depth: int = 0) -> str:
    """`value` as JSON text; TypeError/ValueError for what JSON cannot hold."""
    if depth > 200:
        raise ValueError("the result is nested more than 200 levels deep")
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a JSON number")
        return float.__repr__(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode(item, depth + 1) for item in value) + "]"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"a key of type {type(key).__name__} (JSON keys are strings)")
            parts.append(escape(key) + ":" + encode(item, depth + 1))
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"a value of type {type(value).__name__} is not JSON")


def fence_failed(channel: int, fence: str, message: str) -> None:
    answer(channel, '{"fence":' + escape(fence) + ',"message":' + escape(message) + "}")
    os._exit(FENCE_FAILED)


def set_limits(cpu: int, memory: int, file_size: int, processes: int) -> None:
    import resource  # noqa: PLC0415

    def cap(kind: int, value: int) -> None:
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_AS, memory)
    cap(resource.RLIMIT_FSIZE, file_size)
    cap(resource.RLIMIT_NPROC, processes)
    # SIGXCPU at the soft limit; SIGKILL a second later for a snippet that ignores it.
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    ceiling = cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, ceiling), ceiling))


class Libc:
    """unshare and prctl from libc through _ctypes: ``import ctypes`` costs 5-15 ms of the
    task's start (its Python half and struct); these few lines cost ~1 ms."""

    def __init__(self) -> None:
        import _ctypes  # noqa: PLC0415

        class CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = CInt

        class Library:
            _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # libc itself

        # CFuncPtr takes any object with a _handle, as ctypes.CDLL is.
        self.unshare = Function(("unshare", Library))  # type: ignore[arg-type]
        self.prctl = Function(("prctl", Library))  # type: ignore[arg-type]
        self.errno = _ctypes.get_errno


def isolate_network(channel: int, network: str) -> Libc:
    """A new network namespace, as asked; returns libc for the other prctl calls."""
    libc = Libc()
    if network != "host":
        # Root makes the namespace itself; another user needs a user namespace to own it.
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        if libc.unshare(flags) != 0:
            error = os.strerror(libc.errno())
            if network == "isolate":
                fence_failed(channel, "network", f"unshare(CLONE_NEWNET) failed: {error}")
    return libc


def drop_privileges(channel: int, uid: int, gid: int, libc: Libc) -> None:
    """The task's own uid and gid, no supplementary groups, and no new privileges."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as error:
        fence_failed(channel, "uid", f"could not become uid {uid}: {error.strerror}")
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        fence_failed(channel, "uid", f"still uid {os.geteuid()}, not {uid}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fence_failed(channel, "no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS) failed")


def hold_import_dirs() -> dict[str, int]:
    """An O_PATH descriptor of each import directory, opened while still root."""
    held = {}
    for entry in sys.path:
        try:
            held[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            pass
    return held


def reach_import_dirs(held: dict[str, int]) -> None:
    """Import directories the task's uid cannot reach by path are reached through the
    descriptors held for them: an interpreter installed under a private home (/root/.pyenv,
    uv's pythons under /root/.local) keeps its standard library readable to the snippet,
    and the uid gains nothing else (a process may always follow its own /proc/self/fd)."""
    moved = {}
    for index, entry in enumerate(sys.path):
        fd = held.pop(entry, None)
        if fd is None:
            continue
        if os.access(entry, os.R_OK | os.X_OK):
            os.close(fd)
        else:
            moved[entry] = sys.path[index] = f"/proc/self/fd/{fd}"
    for fd in held.values():
        os.close(fd)
    if not moved:
        return
    sys.path_importer_cache.clear()
    # Packages imported at start (encodings) find their submodules on their own __path__.
    for module in list(sys.modules.values()):
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            for index, entry in enumerate(path):
                for old, new in moved.items():
                    if entry.startswith(old + "/"):
                        path[index] = new + entry[len(old) :]


def read_payload() -> tuple[str, dict[str, object]]:
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    # The agent wrote this payload (the task wrote none of it): marshal is safe here.
    code, inputs = marshal.loads(b"".join(chunks))  # noqa: S302
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return code, inputs


def failure_answer(error: BaseException, code: str, spawned: bool) -> str:
    """The answer for an exception the snippet let out: a limit, or its traceback."""
    import errno  # noqa: PLC0415

    if isinstance(error, MemoryError):
        return '{"limit":"memory"}'
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return '{"limit":"file_size"}'
    if isinstance(error, BlockingIOError) and spawned:
        return '{"limit":"processes"}'
    if isinstance(error, RuntimeError) and "can't start new thread" in str(error):
        return '{"limit":"processes"}'
    import linecache  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")
    if error.__traceback__ is not None:  # from the snippet's frame on, not the runner's
        error = error.with_traceback(error.__traceback__.tb_next)
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
    text = "\n".join(lines[-TRACEBACK_LINES:])[-TRACEBACK_CHARS:]
    return '{"error":' + escape(text) + "}"


def vm_hwm_kb() -> int:
    """This image's peak resident memory (rusage's would include the agent's, see shell.py)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run() -> None:
    cpu, memory, file_size, processes, uid, gid = (int(value) for value in sys.argv[2:8])
    network, channel = sys.argv[8], int(sys.argv[9])
    try:
        set_limits(cpu, memory, file_size, processes)
    except (OSError, ValueError) as error:
        fence_failed(channel, "rlimits", str(error))
    code, inputs = read_payload()
    libc = isolate_network(channel, network)
    sys.path.extend(sys.argv[10:])
    if uid < 0:
        run_snippet(channel, code, inputs)  # the agent is not root: no uid of the task's own
    guard(channel, code, inputs, uid, gid, libc)


def guard(  # noqa: PLR0913 — the task, its uid and libc
    channel: int, code: str, inputs: dict[str, object], uid: int, gid: int, libc: Libc
) -> None:
    """Fork the snippet's process and outlive it: every process it leaves is reparented here
    (a subreaper), killed and reaped; then exit with GUARD_EXIT codes, which the task cannot
    forge (this process stays root until the task's processes are all gone)."""
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        fence_failed(channel, "subreaper", "prctl(PR_SET_CHILD_SUBREAPER) failed")
    held = hold_import_dirs()
    pid = os.fork()
    if pid == 0:
        drop_privileges(channel, uid, gid, libc)
        reach_import_dirs(held)
        run_snippet(channel, code, inputs)
    for fd in held.values():
        os.close(fd)
    os.close(channel)
    _, status = os.waitpid(pid, 0)
    # Become the task's uid to reach exactly its processes with kill(-1); reap what comes back.
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    for _ in range(1000):
        try:
            os.kill(-1, 9)
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, 0)[0] > 0:
                pass
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):
        os._exit(GUARD_SIGNALLED + os.WTERMSIG(status))
    os._exit(GUARD_EXITED_NONZERO if os.WEXITSTATUS(status) else 0)


def run_snippet(channel: int, code: str, inputs: dict[str, object]) -> None:
    """Run the snippet in this process, answer on `channel` and exit; never returns."""
    runner_pid = os.getpid()
    spawned = False  # whether the last audited event started a process

    def watch(event: str, _: object) -> None:
        nonlocal spawned
        spawned = event in SPAWN_EVENTS

    sys.addaudithook(watch)
    namespace: dict[str, object] = {"__name__": "__main__", "inputs": inputs, "result": None}
    document = ""
    try:
        exec(compile(code, "<snippet>", "exec"), namespace)  # noqa: S102 — this is the tool
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            document = '{"error":' + escape(f"the snippet exited with {exit_.code!r}") + "}"
    except BaseException as error:  # noqa: BLE001 — every failure of the snippet is reported
        if os.getpid() != runner_pid:
            os._exit(1)  # a process the snippet forked: only the snippet's own process answers
        document = failure_answer(error, code, spawned)
    if os.getpid() != runner_pid:
        os._exit(0)
    if not document:
        try:
            document = '{"result":' + encode(namespace.get("result"))
            document += f',"peak_kb":{vm_hwm_kb()}}}'
        except (TypeError, ValueError, RecursionError) as error:
            document = '{"invalid_result":' + escape(str(error)) + "}"
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    answer(channel, document)
    os._exit(0)


def sweep() -> None:
    """Kill every process of a uid: a task past its time (its guard then reaps them), or
    what a task left when its guard was killed with it.

    One kill(-1) is enough, and a second could be too many: a fork cannot complete once its
    parent has the SIGKILL, and no killed process can finish exiting (and wake the guard,
    which then becomes the uid to reap them) before the kill has gone through every process.
    Called again, it could kill the guard mid-reap and leave the zombies to init."""
    uid, gid = int(sys.argv[2]), int(sys.argv[3])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        pass  # none left


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run()
    elif sys.argv[1] == "sweep":
        sweep()
