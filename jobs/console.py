"""What `make demo` shows while a run goes on: a line per step with its time and the asset's key figure, and a
progress bar on long steps. Everything else goes to the run's log in the Dagster instance (the UI shows it) and to
the demo's log file.

The lines are read off the run's own event log (step start, success and failure, materialization metadata, the
assets' ``done/total`` progress lines) by a thread while the run executes: the record the UI shows, so the assets
do nothing for the console.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
from collections.abc import Mapping
from typing import TextIO

import dagster as dg

# The metadata that says whether a step did its job; any other asset shows the first two numbers it reports.
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "source_files": ("usable_files",),
    "code_units": ("units",),
    "ast_corpus": ("rows", "tokens_mean"),
    "ast_tokenizer": ("ast_tokens", "vocab_size"),
    "ast_phase1_adapter": ("eval_loss_initial", "eval_loss_final"),
    "ast_phase2_adapter": ("eval_loss_initial", "eval_loss_final"),
    "ast_eval": ("nl2ast_valid_rate", "nl2ast_tree_similarity"),
    "dsl_sft_adapter": ("eval_loss_initial", "eval_loss_final"),
    "dsl_dpo_adapter": ("reward_accuracy_last", "reward_margin_last"),
    "dsl_base_eval": ("semantic_pass_rate_constrained", "schema_valid_rate_constrained"),
    "dsl_sft_eval": ("semantic_pass_rate", "schema_valid_rate"),
    "dsl_dpo_eval": ("semantic_pass_rate", "schema_valid_rate"),
    "autocomplete_stage_a_adapter": ("train_loss", "pairs"),
    "autocomplete_stage_b_adapter": ("train_loss", "pairs"),
    "autocomplete_eval": ("m0_domain_exact_match", "m2_domain_exact_match"),
    "autocomplete_stage_b_gguf": ("q8_0_agreement", "q8_0_speedup_vs_hf"),
    "srl_adapter": ("reward_first", "reward_last"),
    "srl_eval": ("base_reward", "student_reward"),
}
BAR_AFTER_S = 5.0  # a step shorter than this never shows a bar
BAR_WIDTH = 24
# An asset's progress line: "phase 1 [python] step 40/300: loss=...", "dsl_dataset: 120/400 requests labelled"
_PROGRESS = re.compile(r"(?<![\w./])(\d+)/(\d+)(?![\w./])")
_NOT_A_FIGURE = re.compile(r"^skipped_|_seconds$|_size_mb$|^seconds$")


def key_figures(asset: str, metadata: Mapping[str, dg.MetadataValue]) -> str:
    """The asset's key figures as ``name value`` pairs, and what it skipped when it skipped anything."""
    numbers = {k: v.value for k, v in metadata.items()
               if isinstance(v, dg.IntMetadataValue | dg.FloatMetadataValue) and v.value is not None}
    names = KEY_FIGURES.get(asset) or tuple(k for k in numbers if not _NOT_A_FIGURE.search(k))[:2]
    shown = [f"{name} {_number(numbers[name])}" for name in names if name in numbers]
    if numbers.get("skipped_total"):
        shown.append(f"skipped {_number(numbers['skipped_total'])}")
    return ", ".join(shown)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def progress_of(message: str) -> tuple[int, int] | None:
    """``(done, total)`` from a progress line, or None when the message is not one."""
    match = _PROGRESS.search(message)
    if not match:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    return (done, total) if 0 < done <= total and total > 1 else None


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * done / total)
    return "█" * filled + "░" * (width - filled) + f" {done}/{total}"


class StepLines:
    """Follows one run's event log from a thread and writes its step lines to ``screen``.

    On a terminal the running step's bar redraws in place, lines are cut to the terminal's width, and ``fold``
    replaces a finished run's lines with one; elsewhere (a CI log, a pipe) a long step prints a line at each quarter
    instead and nothing is folded, so a captured log stays a log.
    """

    def __init__(self, instance: dg.DagsterInstance, run_id: str, screen: TextIO, *, poll_s: float = 0.5,
                 indent: str = "  ") -> None:
        self.instance, self.run_id, self.screen = instance, run_id, screen
        self.poll_s, self.indent = poll_s, indent
        self.tty = screen.isatty()
        self.failures: list[str] = []  # "step: first line of its error", in order
        self.done: list[tuple[str, str]] = []  # (step, key figures) of each step that succeeded, in order
        self.lines = 0  # lines written (what ``fold`` erases)
        self._cursor: str | None = None
        self._started: dict[str, float] = {}
        self._figures: dict[str, list[str]] = {}
        self._bar_shown = False
        self._quarters: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="astforge-step-lines", daemon=True)

    def __enter__(self) -> StepLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()  # what the run wrote after the last poll
        self._clear_bar()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._drain()
            except Exception as exc:  # a console that stops drawing must never fail the run
                logging.getLogger("astforge.console").warning(f"step lines stopped: {exc}")
                return

    def _drain(self) -> None:
        while True:
            found = self.instance.get_records_for_run(self.run_id, cursor=self._cursor)
            for record in found.records:
                self._on(record.event_log_entry)
            self._cursor = found.cursor
            if not found.has_more:
                return

    def _on(self, entry) -> None:
        event = entry.dagster_event
        if event is None:
            if entry.step_key and entry.level >= logging.INFO:
                found = progress_of(entry.user_message)
                if found:
                    self._progress(entry.step_key, *found, entry.timestamp)
            return
        step = event.step_key
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            self._started[step] = entry.timestamp
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = entry.asset_materialization
            figures = key_figures(materialization.asset_key.path[-1], materialization.metadata)
            if figures:
                self._figures.setdefault(step, []).append(figures)
        elif kind == dg.DagsterEventType.STEP_SUCCESS:
            figures = "; ".join(self._figures.get(step, []))
            self.done.append((step, figures))
            self._line("✓", step, entry.timestamp, figures)
        elif kind == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error if event.step_failure_data else None
            why = _first_line(error.message) if error else "failed"
            self.failures.append(f"{step}: {why}")
            self._line("✗", step, entry.timestamp, why)
        elif kind == dg.DagsterEventType.STEP_SKIPPED:
            self._line("-", step, entry.timestamp, "skipped (an upstream step failed)")

    def _line(self, mark: str, step: str, at: float, text: str) -> None:
        self._clear_bar()
        took = at - self._started.get(step, at)
        self._write(f"{self.indent}{mark} {step:<30} {took:>5.0f}s  {text}".rstrip())

    def _progress(self, step: str, done: int, total: int, at: float) -> None:
        elapsed = at - self._started.get(step, at)
        if elapsed < BAR_AFTER_S and done < total:
            return
        if self.tty:
            self.screen.write(f"\r{self.indent}  {step:<30} {bar(done, total)}  {elapsed:.0f}s\x1b[K")
            self._bar_shown = True
        else:
            quarter = 4 * done // total
            if quarter <= self._quarters.get(step, 0):
                return
            self._quarters[step] = quarter
            self._write(f"{self.indent}  {step:<30} {bar(done, total)}  {elapsed:.0f}s")
        self.screen.flush()

    def _write(self, line: str) -> None:
        if self.tty:  # a wrapped line would take two rows and fold would erase one row too few
            line = line[:self._columns() - 1]
        self.screen.write(line + "\n")
        self.screen.flush()
        self.lines += 1

    def _columns(self) -> int:
        """The terminal's width: asked of the screen itself, since the demo points stdout at its log file."""
        try:
            return os.get_terminal_size(self.screen.fileno()).columns
        except (OSError, ValueError, io.UnsupportedOperation):
            return shutil.get_terminal_size().columns

    def fold(self, summary: str, rows_above: int = 0) -> None:
        """On a terminal, replace this run's lines (and ``rows_above`` rows written before them) with ``summary``;
        elsewhere write ``summary`` after them."""
        self._clear_bar()
        if self.tty and self.lines + rows_above:
            self.screen.write(f"\x1b[{self.lines + rows_above}F\x1b[J")  # up to the first row, clear below
            self.lines = 0
        self._write(summary)

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.screen.write("\r\x1b[K")
            self.screen.flush()
            self._bar_shown = False


_RAISED_AS = re.compile(r"^(?:[\w]+\.)*(\w+): ")


def _first_line(text: str) -> str:
    """An error's first line: a dg.Failure's own words, another exception's class without its module path."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    first = lines[0] if lines else "failed"
    first = _RAISED_AS.sub(lambda m: "" if m.group(1) == "Failure" else f"{m.group(1)}: ", first, count=1)
    return first if len(first) <= 160 else first[:157] + "..."
