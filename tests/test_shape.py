"""The package's shape limits: no module of maxq/ over 600 lines, no function over 80 lines.

The modules and functions still over a limit are listed below, each with the work that removes
it; an entry that no longer breaks its limit fails the test too, so the list only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maxq"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: modules over MAX_MODULE_LINES today: none since the runner / results / training splits (issue 23)
#: (both empty: the list could only shrink, and it has; a new entry needs a reason here)
LONG_MODULES: set[str] = set()
#: functions over MAX_FUNCTION_LINES today (module, function): issue 23, part 2
LONG_FUNCTIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _functions(source: str) -> dict[str, int]:
    return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_no_module_over_the_line_limit():
    lengths = {name: len(text.splitlines()) for name, text in _modules().items()}
    over = {name for name, n in lengths.items() if n > MAX_MODULE_LINES}
    assert over - LONG_MODULES == set(), {n: lengths[n] for n in over - LONG_MODULES}
    assert LONG_MODULES - over == set(), "now within the limit: remove from LONG_MODULES"


def test_no_function_over_the_line_limit():
    over = {(name, fn): n for name, text in _modules().items()
            for fn, n in _functions(text).items() if n > MAX_FUNCTION_LINES}
    assert set(over) - LONG_FUNCTIONS == set(), {k: over[k] for k in set(over) - LONG_FUNCTIONS}
    assert LONG_FUNCTIONS - set(over) == set(), "now within the limit: remove from LONG_FUNCTIONS"


def test_the_split_modules_keep_their_public_names():
    """plots, sparse and export were split; what callers import from them still resolves to the
    same objects as in the new modules."""
    from maxq import (export, figure_base, layer_table, mask_figures, onnx_export, plots,
                      run_loading, sparse)
    from maxq import (benchmark_tables, mask_selection, replication_runs, report_output,
                      result_frames, results, row_cost, stats, study_scale, summary_tables)
    from maxq import (checkpointing, epoch_loop, evaluation, official, official_keys,
                      random_states, run_claim, train, train_setup)

    for old, new, names in (
            (plots, figure_base, ("save_figure", "method_color", "palette", "_empty")),
            (plots, mask_figures, ("mask_detail", "mask_compare", "mask_evolution",
                                   "mask_window", "Window", "nm_block_share", "MASK_WIDTH")),
            (sparse, layer_table, ("describe", "format_table", "layer_policy",
                                   "dead_weight_share", "weighted_dead_share", "input_sizes")),
            (results, result_frames, ("Results", "load", "load_run", "load_masks", "method_labels",
                                      "SCALE_KEYS", "RUN_COLUMNS", "CORRUPT_COLUMNS")),
            (results, mask_selection, ("pick_epochs", "pick_layers", "focus_runs", "mask_choice",
                                       "has_mask_records", "heatmap_selection", "layer_order")),
            (results, summary_tables, ("summary_table", "summary_markdown", "ablation_table",
                                       "ablation_markdown", "ABLATION_COLUMNS")),
            (results, row_cost, ("paper_cost", "proxy_gflops", "PAPER_INPUT")),
            (results, study_scale, ("scale_summary", "schedule_frame", "study_window")),
            (results, benchmark_tables, ("benchmark_study", "step_seconds", "training_cost",
                                         "extra_parameters", "fairness_card", "PUBLISHED_TOP1")),
            (results, replication_runs, ("discovery_runs", "same_recipe")),
            (results, report_output, ("report_dir", "save_table", "status_frame", "results_name",
                                      "runs_note", "rendered_markdown", "corrupt_markdown",
                                      "machines", "commits_markdown",
                                      "machines_markdown", "ReportRefused", "committed_runs",
                                      "check_report", "open_report")),
            (results, stats, ("MAXQ", "SRSTE")),
            (train, random_states, ("seed_everything", "rng_state", "set_rng_state")),
            (train, run_claim, ("plan_run_dir", "RunClaim", "claim_run_dir", "claimed_run")),
            (train, train_setup, ("build_loaders", "place", "build_model", "read_weights",
                                  "build_optimizer", "dense_fraction", "learning_rate",
                                  "build_run_model", "distribute", "set_epoch_schedule")),
            (train, epoch_loop, ("RunLog", "Meter", "train_one_epoch", "evaluate_model",
                                 "recalibrate_batchnorm", "check_finite")),
            (train, checkpointing, ("load_checkpoint", "config_json_mismatch", "run_environment",
                                    "mask_checksum", "Progress", "open_records", "record_epoch",
                                    "finish_run", "end_epoch")),
            (train, evaluation, ("CHECKPOINT_DEFINES", "checkpoint_settings",
                                 "adopt_checkpoint_settings", "evaluate")),
            (official, official_keys, ("official_names",)),
            (export, run_loading, ("load_run", "LoadedRun", "ExportError", "NotNMError")),
            (export, onnx_export, ("verify_onnx", "ONNX_ATOL", "ONNX_BATCH_SIZES"))):
        for name in names:
            assert getattr(old, name) is getattr(new, name), (old.__name__, name)
