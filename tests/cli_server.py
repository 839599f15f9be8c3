"""``python -m skipnet ARGS`` many times without paying the imports each time.

A server process imports what the command line imports (skipnet, torch, ray, mlflow, optuna:
about 6 s of a 2-core machine's time per process), then forks one child per command. The child
is a real process: its own working directory and environment, its stdout and stderr in files,
``sys.argv`` as ``python -m skipnet`` sets it, and its exit status is what ``skipnet.cli.main``
returned (or 1 with a traceback on stderr for an uncaught exception, as the interpreter does).
The server runs no torch operation and starts no Python thread before forking: the
children start as a PyTorch DataLoader's forked workers do (the libraries' own native helper
threads, such as jemalloc's, have fork handlers).

``tests/test_bad_input.py`` runs its table through it; ``test_a_forked_command_is_the_command``
there checks, on a sample of the rows, that a fresh ``python -m skipnet`` gives the same
exit status, stdout and stderr.

Run as a script it serves JSON requests on stdin, one a line: ``{"args", "cwd", "env",
"stdout", "stderr"}``; it answers each with one line, ``{"returncode": N}``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path


class CliServer:
    """The client side: ``run`` gives what ``subprocess.run([python, -m, skipnet, *args])`` gives."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lock = threading.Lock()

    def run(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path) -> subprocess.CompletedProcess:
        out, err = logs / "stdout", logs / "stderr"
        request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        with self.lock:                                # one command at a time: each takes well under a second
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI server ended (exit {self.proc.wait()})")
        return subprocess.CompletedProcess(["python", "-m", "skipnet", *args], json.loads(line)["returncode"],
                                           out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    import skipnet.cli
    sys.argv = [str(Path(skipnet.__file__).parent / "__main__.py"), *request["args"]]
    try:
        code = skipnet.cli.main(request["args"])
    except SystemExit as e:                            # argparse's exit 2, or a command's own
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:                              # what the interpreter does with an uncaught exception
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code or 0


def serve() -> None:
    import importlib
    for name in ("torch", "ray", "ray.tune", "mlflow", "optuna", "skipnet.cli", "skipnet.core.train",
                 "skipnet.tune.runner", "skipnet.tracking", "skipnet.fronts", "skipnet.export", "skipnet.cluster"):
        importlib.import_module(name)                  # what the commands import, once
    assert threading.active_count() == 1, "a Python thread before fork"
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.path.remove(str(Path(__file__).parent))        # the tests folder is not the commands' path
    serve()
