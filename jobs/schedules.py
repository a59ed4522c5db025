"""Evaluation re-runs daily for every slice (new adapters trigger it at once: ast_eval is eager)."""

import dagster as dg

from jobs.data import ast_eval_job, dsl_eval_job
from ml.languages import SLICES


@dg.schedule(job=ast_eval_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Daily re-evaluation of every slice's adapters.")
def daily_ast_eval(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(run_key=f"ast_eval:{s}:{day}", partition_key=s) for s in SLICES]


# With an LLM teacher the verdicts can change (a new teacher model): re-judge the current adapters nightly.
daily_dsl_eval = dg.ScheduleDefinition(
    name="daily_dsl_eval", job=dsl_eval_job, cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily re-evaluation of the DSL student's SFT and DPO adapters, and a fresh report.",
)
