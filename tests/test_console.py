"""The demo's step lines, read off a real run's event log. (No ``from __future__ import annotations``: Dagster
reads the assets' context annotations.)"""

import io
import time

import dagster as dg

from jobs.console import BAR_AFTER_S, StepLines, bar, key_figures, progress_of


def test_progress_is_read_from_the_assets_progress_lines():
    assert progress_of("phase 1 [python] step 40/300: loss=1.2") == (40, 300)
    assert progress_of("dsl_dataset: 120/400 requests labelled") == (120, 400)
    assert progress_of("graph_unet_model[python] step 300/300: loss 1.2 (12 s)") == (300, 300)
    assert progress_of("phase 1 [python] step 40: loss=1.2") is None  # no total, no bar
    assert progress_of("read dir:/a/b/c 3 files") is None
    assert progress_of("version 1.2/3.4") is None  # numbers inside a token are not progress
    assert progress_of("0/5 done") is None and progress_of("6/5 done") is None


def test_bar_fills_in_proportion():
    assert bar(0, 4, width=8) == "░" * 8 + " 0/4"
    assert bar(2, 4, width=8) == "█" * 4 + "░" * 4 + " 2/4"
    assert bar(4, 4, width=8) == "█" * 8 + " 4/4"


def test_key_figures_prefer_the_assets_declared_ones_and_name_skips():
    meta = {"eval_loss_initial": dg.MetadataValue.float(3.25), "train_loss": dg.MetadataValue.float(1.0),
            "eval_loss_final": dg.MetadataValue.float(1.125), "skipped_total": dg.MetadataValue.int(0)}
    assert key_figures("ast_phase1_adapter", meta) == "eval_loss_initial 3.25, eval_loss_final 1.125"
    other = {"path": dg.MetadataValue.path("/x"), "skipped_bad": dg.MetadataValue.int(2),
             "files": dg.MetadataValue.int(1200), "seconds": dg.MetadataValue.float(3.0),
             "mean": dg.MetadataValue.float(0.5), "third": dg.MetadataValue.int(9),
             "skipped_total": dg.MetadataValue.int(2)}
    assert key_figures("some_asset", other) == "files 1,200, mean 0.5, skipped 2"


@dg.asset
def counted(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    time.sleep(BAR_AFTER_S + 0.5)  # long enough for a bar
    for done in range(1, 5):
        context.log.info(f"counted step {done}/4: loss=1.0")
    return dg.MaterializeResult(metadata={"rows": dg.MetadataValue.int(42)})


@dg.asset(deps=[counted])
def broken() -> None:
    raise dg.Failure("the teacher answered nothing parseable\nsecond line")


def test_step_lines_follow_a_real_run(tmp_path):
    screen = io.StringIO()  # not a terminal: a line per quarter instead of a bar redrawn in place
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.define_asset_job("j").resolve(asset_graph=dg.Definitions(assets=[counted, broken])
                                               .resolve_asset_graph())
        with StepLines(instance, run_id := "6c1f5d1c-0000-4000-8000-000000000001", screen, poll_s=0.1) as lines:
            result = job.execute_in_process(instance=instance, raise_on_error=False, run_id=run_id)
    assert not result.success
    out = screen.getvalue().splitlines()
    ok = next(line for line in out if "✓ counted" in line)
    assert ok.endswith("rows 42") and int(ok.split()[2].rstrip("s")) >= int(BAR_AFTER_S)
    assert [line.split()[-2] for line in out if "counted" in line and "/4" in line] == ["1/4", "2/4", "3/4", "4/4"]
    failed = next(line for line in out if "✗ broken" in line)
    assert failed.endswith("the teacher answered nothing parseable")
    assert lines.failures == ["broken: the teacher answered nothing parseable"]


def test_an_errors_first_line_is_short():
    from jobs.console import _first_line

    assert _first_line("dagster._core.definitions.events.Failure: no rows\nmore") == "no rows"
    assert _first_line("builtins.ValueError: bad\n") == "ValueError: bad"
    assert _first_line("KeyError: 'x'") == "KeyError: 'x'"
    assert len(_first_line("x" * 500)) == 160


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_finished_run_folds_into_one_line(tmp_path):
    screen = _Terminal()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.define_asset_job("j").resolve(asset_graph=dg.Definitions(assets=[counted]).resolve_asset_graph())
        with StepLines(instance, run_id := "6c1f5d1c-0000-4000-8000-000000000002", screen, poll_s=0.1) as lines:
            assert job.execute_in_process(instance=instance, run_id=run_id).success
    drawn = screen.getvalue()
    assert "\r" in drawn and "█" in drawn  # the bar redrawn in place
    assert lines.lines == 1 and lines.done == [("counted", "rows 42")]
    lines.fold("[astforge] ✓ j  1 steps", rows_above=1)
    # up two rows (the step line and the job's header), clear to the end of the screen, then the one line
    assert screen.getvalue()[len(drawn):] == "\x1b[2F\x1b[J[astforge] ✓ j  1 steps\n"
