"""A sensor that re-materializes exactly the slices whose local source files changed."""


import json

import dagster as dg

from jobs.data import ast_data_job
from ml.corpus.sources import fingerprint
from ml.languages import LANGUAGES
from resources import CorpusResource


def slice_fingerprints(corpus: CorpusResource) -> dict[str, str]:
    prints = {}
    for name, lang in LANGUAGES.items():
        spec = corpus.spec_for(name)
        if spec.kind in ("dir", "zip"):  # hub datasets are not watched: they have no local files
            prints[name] = fingerprint(spec, lang.globs, lang.excludes)
    return prints


@dg.sensor(
    job=ast_data_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches local corpus folders and archives; requests a run per slice whose files changed.",
)
def corpus_change_sensor(context: dg.SensorEvaluationContext, corpus: CorpusResource):
    previous = json.loads(context.cursor) if context.cursor else {}
    current = slice_fingerprints(corpus)
    # A slice seen for the first time only records its baseline: nothing has changed yet.
    changed = sorted(s for s, fp in current.items() if s in previous and previous[s] != fp)
    context.update_cursor(json.dumps(current, sort_keys=True))
    if not changed:
        return dg.SkipReason("no corpus source changed")
    return [dg.RunRequest(run_key=f"{s}:{current[s]}", partition_key=s) for s in changed]
