"""The mask explorer of ``notebooks/masks.ipynb``: finding runs, keeping the layer and epoch when
the run changes, and the ipywidgets explorer (detail, compare, evolution views).

Runs are found under the runs root (``$MAXQ_RUNS_ROOT``, else the repository's ``runs/``) as
``<root>/<study>/<run>/`` (``maxq batch``) and ``<root>/<name>/`` (``maxq train --save_dir``),
plus any run directory given by path. Only runs with mask snapshots are listed. When the
default runs root has none (a fresh clone), the committed sample runs of ``samples/sample/``
(``studies/sample.toml``) are shown instead, and the message says so.
"""
from __future__ import annotations

import functools
import os
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from maxq import methods, paths, plots, records, results

#: the one command that makes runs to look at (seconds per run on a CPU)
MAKE_RUNS = "maxq batch smoke"
#: the committed sample runs (``maxq batch sample --runs-root samples``), shown when the
#: default runs root has none
SAMPLES_ROOT = paths.REPO_ROOT / "samples"
SAMPLE_STUDY = "sample"
MAKE_SAMPLES = "maxq batch sample --runs-root samples --no-report --force"
VIEWS = ("detail", "compare", "evolution")
#: crop sizes offered by the zoom control: (rows, N:M blocks of M columns); None: the whole
#: layer. Counted in blocks so that every N:M pattern shows its blocks at the default zoom.
ZOOMS = {"16 rows × 8 blocks": (16, 8), "32 rows × 16 blocks": (32, 16),
         "64 rows × 32 blocks": (64, 32), "128 rows × 64 blocks": (128, 64),
         "256 rows × 128 blocks": (256, 128), "whole layer": (None, None)}
DEFAULT_ZOOM = "16 rows × 8 blocks"
#: at most this many epochs in the evolution strip (spread over the snapshots)
EVOLUTION_EPOCHS = 8


@dataclass(frozen=True)
class RunInfo:
    """One run directory with mask snapshots."""

    label: str                 # "study/run", "name" (single run) or the directory's path
    path: Path
    arch: str
    method: str
    N: int
    M: int
    study: str | None
    epochs: tuple[int, ...]    # snapshot epochs
    layers: tuple[str, ...]    # sparse layers in network order

    @property
    def method_label(self) -> str:
        return methods.label(self.method)

    @property
    def row(self) -> tuple:
        """What makes two runs one table row (compare MaxQ with SR-STE of the same row)."""
        return (self.study, self.arch, self.N, self.M)

    def describe(self) -> str:
        return f"{self.label} ({self.arch} {self.N}:{self.M}, {self.method_label})"


@dataclass
class Found:
    """The runs the explorer can show and the folders that were searched for them."""

    runs: list[RunInfo]
    searched: list[Path]
    skipped: list[str] = field(default_factory=list)    # run directories without snapshots
    study: str | None = None                             # the study asked for, if any
    #: the default runs root had no runs: these are the committed sample runs
    samples: bool = False

    def __len__(self) -> int:
        return len(self.runs)

    def get(self, key: str | os.PathLike) -> RunInfo:
        """A run by label or by directory path."""
        for info in self.runs:
            if info.label == str(key):
                return info
        for wanted in {Path(key).expanduser().resolve(), paths.in_repo(key).resolve()}:
            for info in self.runs:
                if info.path.resolve() == wanted:
                    return info
        raise records.RunRecordError(f"no run {str(key)!r} with mask snapshots; runs: "
                                     f"{', '.join(i.label for i in self.runs) or 'none'}")

    def message(self) -> str:
        """What was found, or (no runs) where it looked and the command that makes a run."""
        where = ", ".join(_shown(p) for p in self.searched)
        if not self.runs:
            text = (f"No run with mask snapshots found. Searched: {where}. "
                    f"{make_runs_hint(self.study)}")
            if self.skipped:
                text += f" (run directories without snapshots: {', '.join(self.skipped)})"
            return text
        listed = ", ".join(i.label for i in self.runs)
        if self.samples:
            return (f"No runs of your own yet, so these are the {len(self.runs)} committed "
                    f"sample runs ({_shown(self.searched[-1])}: a tiny MobileNetV1, masks at "
                    f"every epoch; re-made by {MAKE_SAMPLES}): {listed}. "
                    f"{make_runs_hint(self.study)}")
        return f"{len(self.runs)} runs with mask snapshots (searched {where}): {listed}"

    def __repr__(self) -> str:
        return self.message()


def make_runs_hint(study: str | None = None) -> str:
    """The command that makes runs to look at: the study's own (``maxq batch <study>``) when
    one was asked for, else the smoke study's (seconds per run)."""
    if study is None or str(study) == SAMPLE_STUDY:
        return f"Make runs of your own (seconds each) from the repository root with:\n{MAKE_RUNS}"
    name = results.results_name(study)
    return (f"Make the runs of study {name!r} from the repository root with:\nmaxq batch "
            f"{study}" + (" (or: make study)" if name == "cpu" else "") +
            "\nor leave study = None to see the committed sample runs.")


def _shown(path: Path) -> str:
    """A folder as the user reads it: relative to the repository when inside it."""
    return paths.shown(path).rstrip("/") + "/"


def read_run(path: str | os.PathLike, label: str | None = None) -> RunInfo | None:
    """The :class:`RunInfo` of a run directory; ``None`` when it has no mask snapshots."""
    path = Path(path)
    epochs = records.mask_snapshot_epochs(path)
    if not epochs:
        return None
    config = records.read_config(path)
    names = list(records.load_mask_snapshot(path, epochs[0]))
    order = []
    if (path / records.LAYERS).exists():
        order = list(dict.fromkeys(line["layer"] for line in records.read_jsonl(path / records.LAYERS)
                                   if line.get("epoch") == epochs[0]))
    layers = [n for n in order if n in names] + [n for n in names if n not in order]
    return RunInfo(label=label or str(path), path=path, arch=str(config.get("arch")),
                   method=str(config.get("conv_bn_type")), N=int(config.get("N") or 0),
                   M=int(config.get("M") or 1), study=config.get("study"),
                   epochs=tuple(epochs), layers=tuple(layers))


def _is_run(path: Path) -> bool:
    return (path / records.CONFIG).is_file()


def find_runs(runs_root: str | os.PathLike | None = None, *, study: str | None = None,
              run_paths: Iterable[str | os.PathLike] = (), samples: bool = True) -> Found:
    """Runs with mask snapshots under ``runs_root`` (see :func:`maxq.paths.runs_root`):
    ``<root>/<study>/<run>/`` and ``<root>/<name>/``; only ``<root>/<study>/`` when ``study``
    is given (a name or a study file); plus the run directories ``run_paths``. When the
    repository's own ``runs/`` was searched (no ``runs_root``, no ``$MAXQ_RUNS_ROOT``) and has
    no runs, and ``study`` is None or ``"sample"``: the committed sample runs
    (:data:`SAMPLES_ROOT`), marked ``samples=True`` (``samples=False``: never)."""
    found = _find_runs(runs_root, study=study, run_paths=run_paths)
    default_root = runs_root is None and not os.environ.get("MAXQ_RUNS_ROOT")
    if found.runs or not default_root or not samples or \
            (study is not None and str(study) != SAMPLE_STUDY):
        return found
    sample = _find_runs(SAMPLES_ROOT, study=SAMPLE_STUDY)
    if not sample.runs:
        return found
    return Found(sample.runs, found.searched + sample.searched, found.skipped, study,
                 samples=True)


def _find_runs(runs_root: str | os.PathLike | None = None, *, study: str | None = None,
               run_paths: Iterable[str | os.PathLike] = ()) -> Found:
    root = paths.runs_root(runs_root)
    searched = [root / results.results_name(study)] if study else [root]
    candidates: list[tuple[str, Path]] = []
    for folder in searched:
        if not folder.is_dir():
            continue
        if _is_run(folder):
            candidates.append((folder.name, folder))
            continue
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            if _is_run(child):
                label = f"{folder.name}/{child.name}" if study else child.name
                candidates.append((label, child))
            elif not study:
                candidates += [(f"{child.name}/{run.name}", run)
                               for run in sorted(p for p in child.iterdir() if p.is_dir())
                               if _is_run(run)]
    for extra in run_paths:
        path = next((p for p in (Path(extra).expanduser(), paths.in_repo(extra)) if _is_run(p)),
                    None)
        if path is not None and all(path.resolve() != p.resolve() for _, p in candidates):
            candidates.append((str(path), path))
            searched.append(path)
    runs, skipped = [], []
    for label, path in candidates:
        try:
            info = read_run(path, label)
        except (records.RunRecordError, OSError, ValueError) as exc:
            skipped.append(f"{label} ({exc})")
            continue
        if info is None:
            skipped.append(label)
        else:
            runs.append(info)
    return Found(runs, searched, skipped, study)


# ----------------------------------------------------------------------------- state rules
def nearest(values: Sequence[int], target: int | None) -> int:
    """The value of ``values`` closest to ``target`` (the larger on a tie; the last for None)."""
    if not values:
        raise ValueError("no values")
    if target is None:
        return values[-1]
    return min(values, key=lambda v: (abs(v - target), -v))


def follow(info: RunInfo, layer: str | None, epoch: int | None) -> tuple[str, int, list[str]]:
    """The (layer, epoch) to show for ``info`` when the user had ``layer`` at ``epoch``: the
    same layer if the run has it, else its first; the same epoch if it is a snapshot, else the
    nearest. Returns ``(layer, epoch, notes)``, a note for each thing that changed."""
    notes = []
    if layer in info.layers:
        new_layer = layer
    else:
        new_layer = info.layers[0]
        if layer is not None:
            notes.append(f"{info.label} ({info.arch}) has no layer {layer}; showing its first "
                         f"sparse layer {new_layer}")
    new_epoch = nearest(info.epochs, epoch)
    if epoch is not None and new_epoch != epoch:
        notes.append(f"{info.label} has no mask snapshot at epoch {epoch} (snapshots: "
                     f"{_span(info.epochs)}); showing epoch {new_epoch}, the nearest")
    return new_layer, new_epoch, notes


def _span(epochs: Sequence[int]) -> str:
    return ", ".join(map(str, epochs)) if len(epochs) <= 6 else \
        f"{', '.join(map(str, epochs[:3]))}, …, {', '.join(map(str, epochs[-2:]))}"


def partner(found: Found, info: RunInfo) -> RunInfo | None:
    """The run to compare ``info`` with: another method of the same table row (same study,
    arch, N:M), else another run of the same architecture, else any other run."""
    others = [o for o in found.runs if o.label != info.label]
    for test in (lambda o: o.row == info.row and o.method != info.method,
                 lambda o: o.arch == info.arch, lambda o: True):
        hits = [o for o in others if test(o)]
        if hits:
            return hits[0]
    return None


def differ_share(hard_a: np.ndarray, hard_b: np.ndarray) -> float:
    """Share of hard-mask entries on which two masks of one layer differ."""
    a, b = np.asarray(hard_a, dtype=bool), np.asarray(hard_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return float((a != b).mean())


@functools.lru_cache(maxsize=16)
def _layer_cached(path: str, epoch: int, layer: str, stamp: float) -> dict[str, np.ndarray]:
    snap = records.load_mask_snapshot(path, epoch, layers=[layer])
    if layer not in snap:
        raise records.RunRecordError(f"{layer} is not a sparse layer of {path}")
    return snap[layer]


def load_layer(info: RunInfo, epoch: int, layer: str) -> dict[str, np.ndarray]:
    """``{"hard", "soft"}`` of one layer at one snapshot epoch (cached)."""
    file = info.path / records.MASKS / f"epoch_{epoch:03d}.npz"
    stamp = file.stat().st_mtime if file.exists() else 0.0
    return _layer_cached(str(info.path), int(epoch), layer, stamp)


# ----------------------------------------------------------------------------- figures
def detail_figure(info: RunInfo, layer: str, epoch: int, window: plots.Window | None = None):
    mask = load_layer(info, epoch, layer)
    return plots.mask_detail(mask["hard"], mask["soft"], info.M, window=window,
                             title=title("detail", info, layer, epoch))


def compare_figure(info: RunInfo, other: RunInfo, layer: str, epoch: int,
                   window: plots.Window | None = None):
    a = load_layer(info, epoch, layer)["hard"]
    b = load_layer(other, epoch, layer)["hard"]
    return plots.mask_compare(a, b, info.M, window=window,
                              labels=(f"A: {info.describe()}", f"B: {other.describe()}"),
                              title=title("compare", info, layer, epoch, other))


def evolution_epochs(info: RunInfo, upto: int | None = None) -> list[int]:
    """The epochs of the evolution strip: up to :data:`EVOLUTION_EPOCHS` snapshot epochs spread
    from the first to ``upto`` (default: the last), both included."""
    upto = info.epochs[-1] if upto is None else nearest(info.epochs, upto)
    return results.pick_epochs([e for e in info.epochs if e <= upto], EVOLUTION_EPOCHS)


def evolution_figure(info: RunInfo, layer: str, window: plots.Window | None = None,
                     upto: int | None = None):
    epochs = evolution_epochs(info, upto)
    hards = {e: load_layer(info, e, layer)["hard"] for e in epochs}
    return plots.mask_evolution(hards, info.M, window=window,
                                title=title("evolution", info, layer, epochs[-1]))


def title(view: str, info: RunInfo, layer: str, epoch: int, other: RunInfo | None = None) -> str:
    """The figure title of a view: run · layer · epoch (evolution: the epochs shown, up to
    ``epoch``)."""
    if view == "compare" and other is not None:
        return f"{info.label} vs {other.label} · {layer} · epoch {epoch}"
    if view == "evolution":
        return f"{info.label} · {layer} · epochs {_span(evolution_epochs(info, epoch))}"
    return f"{info.label} · {layer} · epoch {epoch}"


# ----------------------------------------------------------------------------- the widget
class Explorer:
    """The interactive explorer: view (detail / compare / evolution), run, layer, epoch (a
    slider over the run's snapshot epochs; in the evolution view the last epoch of the strip),
    the run to compare with, and the crop (first row, first column, zoom).

    Every change goes through :meth:`update`; an error is shown in the notebook output (and
    kept in :attr:`errors`). :meth:`figure` draws the current view without widgets."""

    def __init__(self, found: Found, run: str | os.PathLike | None = None,
                 layer: str | None = None, epoch: int | None = None, *,
                 compare_with: str | os.PathLike | None = None, view: str = "detail",
                 zoom: str = DEFAULT_ZOOM):
        import ipywidgets as W

        self.found = found
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.title = ""
        self._busy = False
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
        self.message = W.HTML(_html_message(found.message()))
        self.message.add_class("maxq-found")
        self.out = W.Output()
        self.out.add_class("maxq-figure")
        if not found.runs:
            self.widget = W.VBox([self.message])
            self.info = self.other = None
            return
        self.info = found.get(run) if run is not None else found.runs[0]
        layer_, epoch_, self.notes = follow(self.info, layer, None if epoch is None else int(epoch))
        if layer is not None and layer not in self.info.layers:
            raise records.RunRecordError(f"{layer!r} is not a sparse layer of {self.info.label}; "
                                         f"layers: {', '.join(self.info.layers)}")
        self.other = found.get(compare_with) if compare_with is not None else \
            partner(found, self.info)
        labels = [i.label for i in found.runs]
        wide = W.Layout(width="95%")
        self.view_w = W.ToggleButtons(options=list(VIEWS), value=view, description="view")
        self.run_w = W.Dropdown(options=labels, value=self.info.label, description="run",
                                layout=wide)
        self.other_w = W.Dropdown(options=labels, description="compare with", layout=wide,
                                  value=self.other.label if self.other else None,
                                  style={"description_width": "initial"})
        self.layer_w = W.Dropdown(options=list(self.info.layers), value=layer_,
                                  description="layer", layout=W.Layout(width="60%"))
        self.epoch_w = W.SelectionSlider(options=list(self.info.epochs), value=epoch_,
                                         description="epoch", continuous_update=False,
                                         layout=W.Layout(width="35%"))
        if zoom not in ZOOMS:
            raise ValueError(f"zoom must be one of {', '.join(ZOOMS)}; got {zoom!r}")
        self.zoom_w = W.Dropdown(options=list(ZOOMS), value=zoom, description="zoom",
                                 layout=W.Layout(width="30%"))
        self.row_w = W.IntSlider(value=0, min=0, max=0, description="first row",
                                 continuous_update=False)
        self.col_w = W.IntSlider(value=0, min=0, max=0, step=self.info.M,
                                 description="first column", continuous_update=False)
        for name in ("view", "run", "other", "layer", "epoch", "zoom", "row", "col"):
            widget = getattr(self, f"{name}_w")
            widget.add_class(f"maxq-{name}")
            widget.observe(functools.partial(self._changed, name), names="value")
        self.note_w = W.HTML()
        self.note_w.add_class("maxq-note")
        self.title_w = W.HTML()
        self.title_w.add_class("maxq-title")
        self.widget = W.VBox([self.message, self.view_w, self.run_w, self.other_w,
                              W.HBox([self.layer_w, self.epoch_w]),
                              W.HBox([self.zoom_w, self.row_w, self.col_w]),
                              self.note_w, self.title_w, self.out])
        self._limits()
        self._guard(self.draw)

    # -- state
    @property
    def layer(self) -> str:
        return self.layer_w.value

    @property
    def epoch(self) -> int:
        return self.epoch_w.value

    @property
    def view(self) -> str:
        return self.view_w.value

    def _zoom(self) -> tuple[int | None, int | None]:
        """(rows, columns) of the zoom: its blocks times the run's M."""
        rows, blocks = ZOOMS[self.zoom_w.value]
        return rows, None if blocks is None else blocks * self.info.M

    def window(self) -> plots.Window:
        """The crop of the current layer from the zoom and the first row / column."""
        rows, cols = self._zoom()
        shape = load_layer(self.info, self.epoch, self.layer)["hard"].shape
        return plots.mask_window(shape, self.row_w.value, rows, self.col_w.value, cols,
                                 self.info.M)

    def _limits(self) -> None:
        """Slider ranges for the current layer and zoom (values clamped)."""
        shape = load_layer(self.info, self.epoch, self.layer)["hard"].shape
        total_cols = int(np.prod(shape[1:]))
        zoom_rows, zoom_cols = self._zoom()
        _, rows, _, cols = plots.mask_window(shape, 0, zoom_rows, 0, zoom_cols, self.info.M)
        self.row_w.max = max(0, shape[0] - rows)
        self.row_w.step = max(1, rows // 4)
        self.col_w.max = max(0, total_cols - cols)
        self.col_w.step = self.info.M if total_cols % self.info.M == 0 else 1

    def _changed(self, name: str, change: dict) -> None:
        if self._busy:
            return
        self._guard(lambda: self.update(name, change["new"]))

    def update(self, name: str, value: Any) -> None:
        """Apply one control change (``name`` as in the ``maxq-<name>`` CSS classes) and redraw."""
        self.notes = []
        if name == "run":
            new = self.found.get(value)
            layer, epoch, self.notes = follow(new, self.layer, self.epoch)
            self.info = new
            self._busy = True
            try:
                self.layer_w.options = list(new.layers)
                self.layer_w.value = layer
                self.epoch_w.options = list(new.epochs)
                self.epoch_w.value = epoch
                self.col_w.step = new.M
                if self.other is None or self.other.label == new.label or \
                        self.other.arch != new.arch:          # compare within an architecture
                    self.other = partner(self.found, new)
                    self.other_w.value = self.other.label if self.other else None
            finally:
                self._busy = False
        elif name == "other":
            self.other = self.found.get(value) if value is not None else None
        elif name == "zoom":
            self._busy = True
            try:
                self.row_w.value, self.col_w.value = 0, 0
            finally:
                self._busy = False
        self._busy = True
        try:
            self._limits()
        finally:
            self._busy = False
        self.draw()

    def figure(self, view: str | None = None):
        """The figure of ``view`` (default: the current one) at the current state."""
        if self.info is None:
            return plots._empty("mask explorer", "\n".join(
                textwrap.fill(part, 70) for part in self.found.message().split("\n")))
        view = view or self.view
        window = self.window()
        if view == "compare":
            if self.other is None:
                return plots._empty("compare", "no other run to compare with")
            layer, epoch, notes = follow(self.other, self.layer, self.epoch)
            if layer != self.layer:
                return plots._empty(title(view, self.info, self.layer, self.epoch, self.other),
                                    f"{self.other.label} ({self.other.arch}) has no layer "
                                    f"{self.layer}: pick a run of {self.info.arch}")
            if epoch != self.epoch:
                return plots._empty(title(view, self.info, self.layer, self.epoch, self.other),
                                    f"{self.other.label} has no snapshot at epoch {self.epoch}")
            return compare_figure(self.info, self.other, self.layer, self.epoch, window)
        if view == "evolution":
            return evolution_figure(self.info, self.layer, window, upto=self.epoch)
        return detail_figure(self.info, self.layer, self.epoch, window)

    def draw(self) -> None:
        import matplotlib.pyplot as plt

        fig = self.figure()
        self.title = title(self.view, self.info, self.layer, self.epoch, self.other)
        self.title_w.value = f"<b>{_escape(self.title)}</b>"
        self.note_w.value = "<br>".join(f"⚠ {_escape(n)}" for n in self.notes)
        # replace the Output widget's outputs in one state update instead of capturing with
        # ``with self.out`` (that capture, with clear_output(wait=True), hangs papermill's notebook
        # client headless) or clear_output() + append (the browser may apply the clear last)
        from IPython.core.formatters import format_display_data

        data, metadata = format_display_data(fig)
        self.out.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)
        plt.close(fig)

    def _guard(self, action) -> None:
        """Run ``action``; an exception is printed into the notebook output, not lost in the log."""
        try:
            action()
        except Exception as exc:          # shown to the user, kept for tests
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.errors.append(text)
            self.out.outputs = ({"output_type": "stream", "name": "stderr",
                                 "text": f"mask explorer: {text}\n"},)
            if "ipykernel" not in sys.modules:
                print(f"mask explorer: {text}", file=sys.stderr)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _html_message(text: str) -> str:
    return f"<span>{_escape(text).replace(chr(10), '<br>')}</span>"


def open_explorer(runs_root: str | os.PathLike | None = None, study: str | None = None,
                  run: str | os.PathLike | None = None, layer: str | None = None,
                  epoch: int | None = None, *, compare_with: str | os.PathLike | None = None,
                  view: str = "detail") -> Explorer:
    """Find the runs (``run`` and ``compare_with``: a label or any run directory's path) and
    build the explorer."""
    extra = [p for p in (run, compare_with) if p is not None]    # labels that are no run dir
    found = find_runs(runs_root, study=study, run_paths=extra)
    return Explorer(found, run, layer, epoch, compare_with=compare_with, view=view)
