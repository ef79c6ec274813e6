"""Running one notebook: papermill in a subprocess of its own (and so a kernel of its own).

:func:`execute_notebook` starts ``python -m maxq.notebook_exec SPEC`` (papermill, and nbconvert
for a report's HTML) in a new session, logs its output, waits for it (or its timeout) and
returns ``(ok, error line)``. The running subprocesses are known (:func:`kill_active`,
:func:`signal_active`), so Ctrl-C, SIGTERM and a submitit requeue stop their whole process
groups, kernels included. The kit's notebooks are found by :func:`notebook_path`, their
``parameters`` cell read by :func:`notebook_parameters`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from maxq import paths, records

#: the folder holding the ``maxq`` package (the checkout's root, or site-packages when
#: installed; the kernels' ``PYTHONPATH`` starts with it)
PACKAGE_ROOT = paths.REPO_ROOT

ROW_NOTEBOOK = "row.ipynb"
REPORT_NOTEBOOK = "report.ipynb"
PAPERMILL_LOG = "papermill.log"
KERNEL_NAME = "python3"


class NotebookError(ValueError):
    """A notebook cannot be used (missing, unreadable, or without a ``parameters`` cell)."""


# ----------------------------------------------------------------------------- notebooks
def notebook_path(name: str) -> Path:
    """A notebook of the kit (``row.ipynb``, ``report.ipynb``, ``masks.ipynb``)."""
    for base in (Path.cwd() / "notebooks", paths.kit_dir("notebooks")):
        if (base / name).exists():
            return base / name
    return paths.kit_file("notebooks", name)


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters of a notebook's ``parameters`` cell (name → default as written);
    :class:`NotebookError` when the notebook is missing, unreadable or has no such cell."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise NotebookError(f"notebook {path} cannot be read: {exc}") from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise NotebookError(f"notebook {path} has no cell tagged 'parameters' (papermill "
                            f"injects the row's options after that cell; add the tag in "
                            f"JupyterLab: cell → property inspector → tags)")
    import papermill

    try:
        return {name: spec["default"] for name, spec in papermill.inspect_notebook(path).items()}
    except Exception as exc:  # noqa: BLE001
        raise NotebookError(f"notebook {path}: cannot read its parameters cell: {exc}") from None


def package_pythonpath(current: str | None) -> str:
    """``$PYTHONPATH`` for a kernel or job: this maxq (the one beside the notebooks) first,
    then ``current``."""
    return os.pathsep.join([str(PACKAGE_ROOT)] + ([current] if current else []))


def _kernel_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if jobs > 1 or key not in env:
            env[key] = threads
    env["PYTHONPATH"] = package_pythonpath(env.get("PYTHONPATH"))
    env["TQDM_DISABLE"] = "1"          # no progress bars inside kernels: logs stay readable
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MPLBACKEND", None)        # the kernel's inline backend shows the curves
    return env


def execute_notebook(input_path: str | os.PathLike, output_path: str | os.PathLike,
                     parameters: dict[str, Any], *, log_path: str | os.PathLike,
                     cwd: str | os.PathLike | None = None, html_path: str | None = None,
                     timeout: float | None = None, jobs: int = 1) -> tuple[bool, str]:
    """Run one notebook with papermill in its own subprocess (and so its own kernel).

    stdout/stderr of papermill and the kernel go to ``log_path``. Returns ``(ok, error)`` where
    ``error`` is one line (the notebook's exception, a timeout, ...)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    fd, error_file = tempfile.mkstemp(prefix="maxq-batch-", suffix=".err")
    os.close(fd)
    spec = {"input": str(input_path), "output": str(output_path), "parameters": parameters,
            "error_file": error_file, "html": html_path}
    cmd = [sys.executable, "-m", "maxq.notebook_exec", json.dumps(spec)]
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=_kernel_env(jobs),
                                    cwd=str(cwd or Path.cwd()), start_new_session=True)
            with _ACTIVE_LOCK:
                _ACTIVE.add(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return False, f"timed out after {timeout:g} s (see {log_path})"
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(proc)
        message = Path(error_file).read_text(encoding="utf-8").strip()
        if rc != 0:
            return False, one_line(message or f"papermill exited with status {rc} "
                                               f"(see {log_path})")
        return True, ""
    finally:
        try:
            os.unlink(error_file)
        except OSError:
            pass


#: papermill subprocesses running now (each the leader of its own session: kernel included)
_ACTIVE: set[subprocess.Popen] = set()
_ACTIVE_LOCK = threading.Lock()
#: set while a batch is being stopped (Ctrl-C, SIGTERM, SIGHUP): no new row starts
STOP = threading.Event()


def kill_active() -> None:
    """Stop every running notebook subprocess (and its kernel); return when they ended."""
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop papermill's process group and the groups of its descendants (the kernel runs in a
    session of its own, with its data-loader workers): SIGTERM, up to 10 s, then SIGKILL; return
    when all of them have ended."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    groups = {proc.pid}
    for child in descendants:
        try:
            groups.add(os.getpgid(child.pid))
        except OSError:
            pass
    groups.discard(os.getpgrp())              # never our own group
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        _, alive = psutil.wait_procs(descendants, timeout=wait)
        if not alive:
            return


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line, at most ``limit`` characters (status lines, error lines)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _execute_main(spec_json: str) -> int:
    """Inside the subprocess: papermill (and nbconvert for ``html``)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    spec = json.loads(spec_json)
    error_file = spec["error_file"]
    try:
        import papermill

        papermill.execute_notebook(
            spec["input"], spec["output"], parameters=spec["parameters"],
            kernel_name=KERNEL_NAME, progress_bar=False, log_output=True,
            cwd=None,  # already in execute_notebook's cwd; the log names no folder
            request_save_on_cell_execute=True)
        if spec.get("html"):
            import nbconvert
            import nbformat

            # a reader's page: no code cells or prompts, titled by the report's folder (study);
            # raw HTML in Markdown (text from study files) escaped
            body, _ = html_exporter().from_notebook_node(
                nbformat.read(spec["output"], as_version=4), resources={
                    "metadata": {"name": f"MaxQ report: {Path(spec['html']).parent.name}"}})
            records.atomic_write_text(spec["html"], body)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes the row's error line
        ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
        message = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
        Path(error_file).write_text(one_line(message), encoding="utf-8")
        print(f"maxq batch: {message}", file=sys.stderr)
        return 1


def signal_active(sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every running notebook's process group and return at once (safe in a
    signal handler: nothing is waited for; :func:`execute_notebook` reaps them)."""
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def html_exporter():
    """nbconvert's HTML exporter with the raw HTML of Markdown (cells and outputs) escaped: text
    from study files (``[study] description``, labels, claims) is shown, never run."""
    import nbconvert
    from jinja2 import pass_context
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class EscapingHTMLExporter(nbconvert.HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = IPythonRenderer(
                escape=True, attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return EscapingHTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                exclude_output_prompt=True)



if __name__ == "__main__":
    sys.exit(_execute_main(sys.argv[1]))
