import json
import os
import shutil

import dagster as dg

from jobs.sensors import corpus_change_sensor
from resources import CorpusResource
from tests.conftest import FIXTURES


def test_sensor_requests_exactly_the_changed_slices(tmp_path):
    for lang in ("python", "javascript"):
        shutil.copytree(FIXTURES / lang, tmp_path / lang)
    corpus = CorpusResource(sources={"python": f"dir:{tmp_path / 'python'}",
                                     "javascript": f"dir:{tmp_path / 'javascript'}",
                                     "java": "hf:some/dataset"})
    ctx = dg.build_sensor_context(resources={"corpus": corpus})
    first = corpus_change_sensor(ctx)
    assert isinstance(first, dg.SkipReason)  # the first look records a baseline
    cursor = json.loads(ctx.cursor)
    assert set(cursor) == {"python", "javascript"}  # hub datasets are not watched

    ctx = dg.build_sensor_context(cursor=ctx.cursor, resources={"corpus": corpus})
    assert isinstance(corpus_change_sensor(ctx), dg.SkipReason)

    js_file = next((tmp_path / "javascript").rglob("*.js"))
    js_file.write_text(js_file.read_text() + "\nfunction added(a) { return a; }\n")
    os.utime(js_file, ns=(1, 1))
    ctx = dg.build_sensor_context(cursor=ctx.cursor, resources={"corpus": corpus})
    requests = corpus_change_sensor(ctx)
    assert [r.partition_key for r in requests] == ["javascript"]
