"""Run directories → tidy pandas DataFrames, and the tables of the report: one import for the
report notebook, the explorer and ``maxq report``.

Everything is read through :mod:`maxq.records` (``config.json``, ``metrics.jsonl``,
``layers.jsonl``, ``result.json``, mask snapshots); no text log is parsed. ``load(study)``
returns a :class:`Results` with the DataFrames ``runs``, ``epochs`` and ``layers`` (their
columns: :mod:`maxq.result_frames`).

This module defines nothing: it gathers the names of the modules that own them, so that
``maxq.results.<name>`` keeps working for every caller.

* :mod:`maxq.result_frames` — :class:`Results`, :func:`load`, :func:`load_run`, mask snapshots
* :mod:`maxq.mask_selection` — the focus runs, epochs and layers the mask figures show
* :mod:`maxq.summary_tables` — the summary table and the ablation table (DataFrame, Markdown)
* :mod:`maxq.row_cost` — FLOPs and parameters at the paper's scale and at the proxy's
* :mod:`maxq.study_scale` — the scale paragraph and the incremental schedules' curves
* :mod:`maxq.benchmark_tables` — the N:M benchmark: step time, training cost, fairness card
* :mod:`maxq.replication_runs` — the discovery runs a held-out study is compared with
* :mod:`maxq.report_output` — the report folder, table files, the report guard, run notes
* :mod:`maxq.official_logs` — the authors' logs beside the kit's runs (paper study)
* :mod:`maxq.stats` — intervals, paired differences and verdicts
"""
from __future__ import annotations

# noqa: F401 throughout: names re-exported for the callers of maxq.results
from maxq.benchmark_tables import (PUBLISHED_TOP1, benchmark_study, extra_parameters,  # noqa: F401
                                   fairness_card, step_seconds, training_cost)
from maxq.mask_selection import (focus_runs, has_mask_records, heatmap_selection,  # noqa: F401
                                 layer_order, mask_choice, pick_epochs, pick_layers)
# the authors' logs, for the paper study's report (re-exported: maxq.results.read_official_log)
from maxq.official_logs import (official_comparison, official_curves,  # noqa: F401
                                official_overlay, official_summary, read_official_log,
                                read_official_results, read_official_test_log)
from maxq.official_logs import overlay_figure as official_overlay_figure  # noqa: F401
from maxq.replication_runs import (discovery_runs, rerun_runs, rerun_table,  # noqa: F401
                                   same_recipe)
from maxq.report_output import (ReportRefused, check_report, committed_runs,  # noqa: F401
                                commits_markdown, corrupt_markdown, machines,
                                machines_markdown, open_report, rendered_markdown, report_dir,
                                results_name, runs_note, save_table, status_frame)
from maxq.result_frames import (CORRUPT_COLUMNS, RUN_COLUMNS, SCALE_KEYS, Results,  # noqa: F401
                                load, load_masks, load_run, method_labels)
from maxq.row_cost import PAPER_INPUT, paper_cost, proxy_gflops  # noqa: F401
from maxq.stats import MAXQ, SRSTE  # noqa: F401
from maxq.study_scale import scale_summary, schedule_frame, study_window  # noqa: F401
from maxq.summary_tables import (ABLATION_COLUMNS, ablation_markdown,  # noqa: F401
                                 ablation_table, summary_markdown, summary_table)
