"""The README's commands, run as written: every ``skipnet`` line of its fenced shell blocks that
needs no cluster, no data download and no authors' checkpoint, in order, in a fresh directory,
through ``source .venv/bin/activate`` as the README's first command does, on the results of the
quickstart search it starts (the search ids the README shows are replaced by the ones printed).

The experiment files are copied and shrunk (fewer and smaller batches, half the alpha grid, one
PBT member per gate type; same schedulers and keys) so that the whole README runs in a few
minutes on CI's 2 cores; the command lines themselves are not changed. A model this small may
miss the README's export thresholds: those two commands may then end in their documented
one-line refusal (exit 2). The README's Python snippet runs too.

The README's first command, the quickstart search, runs while the ``skipnet train`` and ``skipnet
eval`` commands after it run beside it (they read none of its results and write no MLflow, as a
reader with a second terminal would run them); every other command starts when the one before
it, and that search, have ended.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow      # the README's commands, end to end: minutes

ROOT = Path(__file__).resolve().parents[1]
ACTIVATE = Path(sys.executable).parent / "activate"
README_IDS = {"quickstart": "quickstart-20261125-013429"}      # the ids the README shows
NEEDS_MORE = ("--address", ".pth.tar", "cifar10", "imagenet", "submit", "JOB_ID")   # cluster, data, authors' files
SHRINK = {"data.synthetic_size": 800, "data.synthetic_test_size": 100, "data.val_size": 100,
          "sp.batch_size": 32, "sp.iterations": 20, "sp.lr_milestones": [15], "sp.eval_every": 10,
          "sp.gate_warmup": 5, "hrl.batch_size": 32, "hrl.iterations": 10, "hrl.eval_every": 5}
STEP = 5                 # HRL iterations a search trial reports after: two reports, as the files have
THRESHOLDS = ("--max-computation", "--min-accuracy")     # may find no trial in a search this small


def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Every ``skipnet`` command of the README's bash blocks, comments dropped, continuation
    lines joined; the first command's set-up part (``bash scripts/setup.sh && source ...``) is
    what the test's shell does itself."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                command = part.split(" #")[0].strip()
                if command.startswith("skipnet "):
                    commands.append(" ".join(command.split()))
    return commands


def runnable(command: str) -> bool:
    return not any(word in command for word in NEEDS_MORE) and "|" not in command


def shrink(path: Path) -> None:
    """Fewer images and iterations in a copied experiment or training file; nothing else."""
    data = yaml.safe_load(path.read_text())
    train = data.get("train", data)
    for dotted, value in SHRINK.items():
        section, key = dotted.split(".")
        if key in train.get(section, {}) or dotted in ("sp.gate_warmup", "data.val_size"):
            train.setdefault(section, {})[key] = value
    if "budget" in data:       # two HRL reports per trial, as in the shipped files
        data["budget"] = {"iterations_per_step": STEP, "max_steps": SHRINK["hrl.iterations"] // STEP}
    for key, spec in data.get("search_space", {}).items():     # half the grid: 2 gate costs, not 4
        if isinstance(spec, dict) and spec.get("type") == "grid" and key == "hrl.alpha":
            spec["values"] = spec["values"][1::2]
    if data.get("scheduler", {}).get("type") in ("pbt", "mopbt"):
        data["num_samples"] = 1                                # one member per gate type
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def shell(command: str, cwd: Path) -> subprocess.Popen:
    """Start ``command`` as the README's reader would type it, its output into unnamed temporary
    files (a pipe nobody reads while it runs would stall it); ``finish`` waits for it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"                       # no venv on PATH until activated
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(["bash", "-c", f"source {ACTIVATE} && {command}"], cwd=cwd, env=env, stdout=out,
                            stderr=err, text=True, start_new_session=True)     # its own group: see the finally below
    proc.outputs = (out, err)
    return proc


def finish(command: str, proc: subprocess.Popen, started: float) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)                # bash and the command under it
        raise
    print(f"{time.monotonic() - started:6.1f} s  {command}")          # shown with -s or on failure
    texts = []
    for f in proc.outputs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, *texts)


def needs_no_search(command: str) -> bool:
    """A command that neither reads a search's results nor writes MLflow: ``skipnet train`` of a
    shipped training file and ``skipnet eval`` of its checkpoint (not of an exported ``best.yaml``)."""
    return command.split()[1] in ("train", "eval") and "best.yaml" not in command


def test_readme_lists_the_commands_this_test_runs():
    commands = readme_commands()
    assert commands[0] == "skipnet search experiments/quickstart.yaml"     # the first command's search
    verbs = {c.split()[1] for c in commands if runnable(c)}
    assert {"search", "train", "eval", "resume", "pareto", "export"} <= verbs, verbs


def test_readme_commands_run_as_written(tmp_path):
    for folder in ("experiments", "search_spaces"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    for path in (tmp_path / "experiments").glob("quickstart*.yaml"):
        shrink(path)
    ids: dict[str, str] = {}
    knee, done = "", []
    running = None       # the first search, while the commands that need none of its results run

    def check(command: str, result: subprocess.CompletedProcess) -> None:
        nonlocal knee
        output = result.stdout + result.stderr
        if result.returncode == 2 and any(flag in command for flag in THRESHOLDS):
            # the README's thresholds are met by the quickstart as shipped (see the closing note of
            # issue 14), not necessarily by this shrunk one: then the documented refusal, one line
            assert "no trial" in result.stderr and len(result.stderr.strip().splitlines()) == 1, output[-2000:]
        else:
            assert result.returncode == 0, f"{command}\n{output[-4000:]}"
        assert "Traceback" not in output, f"{command}\n{output[-4000:]}"
        if command.startswith("skipnet search "):
            found = re.search(r"^search (\S+): \d+ trials", result.stdout, flags=re.M)
            assert found, result.stdout[-2000:]
            ids.setdefault(found.group(1).rsplit("-", 2)[0], found.group(1))
            marked = re.search(r"^  (\S+) .*<- knee(   \(same point: .*\))?$", result.stdout, flags=re.M)
            knee = knee or (marked.group(1) if marked else "")
            last = result.stdout.strip().splitlines()[-1]              # a clean end: the summary is last
            assert last.startswith(("export the knee:", "compare fronts:")), output[-2000:]
            assert "Exception ignored" not in output, output[-2000:]
        done.append(command)

    try:
        for command in readme_commands():
            if not runnable(command) or command in done or (running and command == running[0]):
                continue                                   # the quickstart search is listed twice
            if running and not needs_no_search(command):
                check(running[0], finish(*running))
                running = None
            for name, shown in README_IDS.items():
                if name in ids:
                    command = command.replace(shown, ids[name])
            if ids:
                searches = list(ids.values())
                command = re.sub(r"\bSEARCH_A SEARCH_B\b", " ".join(searches[:2]), command)
                command = re.sub(r"\bSEARCH\b", ids["quickstart"], command).replace("TRIAL_ID", knee)
            started = time.monotonic()
            if not done and running is None and command.startswith("skipnet search "):
                running = (command, shell(command, tmp_path), started)     # the README's first command
                continue
            check(command, finish(command, shell(command, tmp_path), started))
        if running:
            check(running[0], finish(*running))
            running = None
    finally:
        if running and running[1].poll() is None:         # a command beside it failed: stop the search we started
            os.killpg(running[1].pid, signal.SIGKILL)     # bash and the skipnet search under it
            running[1].wait()
    assert len(done) >= 10, done


def test_readme_python_snippet_runs(tmp_path):
    """The Models section's snippet, as written, with its checkpoint line pointed at a file of
    ours (the authors' file is not on this machine)."""
    (snippet,) = [b for b in readme_blocks("python") if "create_model" in b]
    import skipnet
    ckpt = tmp_path / "resnet-110-rnn-cifar10.pth.tar"
    skipnet.save_checkpoint(skipnet.create_model("cifar10_rnn_gate_rl_110"), ckpt)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
