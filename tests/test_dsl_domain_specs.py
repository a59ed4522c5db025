"""`dsl_domain_specs` with a teacher that never answers usably for one domain: the domain is dropped and counted,
and the step fails only when fewer than ``min_domains`` training domains remain. The teacher is the project's chat
server on 127.0.0.1 in front of the programmatic teacher, answering garbage for one domain's spec."""

import logging

import dagster as dg
import pytest

from assets.dsl import dsl_domain_specs
from ml.dsl.teachers import parse_task
from ml.serving import ProgrammaticChatBackend, serve
from resources.teacher import TeacherResource

FLAKY = "orders"


class OneDomainFails:
    """The programmatic backend, except that every ``domain_spec`` request for ``domain`` gets prose, no JSON."""

    model_name = "astforge-programmatic"

    def __init__(self, domain: str) -> None:
        self.inner, self.domain, self.attempts = ProgrammaticChatBackend(), domain, 0

    def __call__(self, messages) -> str:
        task, payload = parse_task(messages) or (None, {})
        if task == "domain_spec" and payload.get("domain") == self.domain:
            self.attempts += 1
            return "I would rather not invent that domain today."
        return self.inner(messages)


@pytest.fixture
def flaky_teacher():
    backend = OneDomainFails(FLAKY)
    with serve(backend) as (_, _, url):
        yield backend, TeacherResource(backend="openai", base_url=url, model="test-model", max_retries=2,
                                       timeout_s=10)


def _run(resources, teacher, instance=None, **config):
    cfg = {"domains": ["library", FLAKY, "flights", "movies"], "heldout_domains": ["movies"],
           "examples_per_schema": 3, **config}
    return dg.materialize([dsl_domain_specs], resources={**resources, "teacher": teacher}, instance=instance,
                          run_config={"ops": {"dsl_domain_specs": {"config": cfg}}}, raise_on_error=False)


def test_a_domain_the_teacher_fails_on_is_dropped_and_counted(resources, flaky_teacher):
    backend, teacher = flaky_teacher
    instance = dg.DagsterInstance.ephemeral()
    result = _run(resources, teacher, instance)
    assert result.success
    assert backend.attempts == 3  # the first try and max_retries=2
    [mat] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in mat.materialization.metadata.items()}
    assert (meta["domains"], meta["training_domains"], meta["domains_dropped"]) == (3, 2, 1)
    assert meta["dropped_domains"] == FLAKY and meta["heldout_domains"] == "movies"
    [warning] = [e for e in instance.all_logs(result.run_id) if f"dropped domain {FLAKY!r} (train)" in e.user_message]
    assert warning.level == logging.WARNING and "no valid domain spec" in warning.user_message

    catalog = resources["catalog"]
    domains = {r["domain"] for r in catalog.query("SELECT domain FROM dsl_domain_specs")}
    assert domains == {"library", "flights", "movies"}
    [skip] = catalog.query("SELECT reason, count FROM skipped_inputs WHERE asset_key = 'dsl_domain_specs'")
    assert (skip["reason"], skip["count"]) == ("teacher_dropped", 1)


def test_fewer_training_domains_than_min_domains_fail_the_step(resources, flaky_teacher):
    _, teacher = flaky_teacher
    result = _run(resources, teacher, min_domains=3)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "2 training domain(s) left (library, flights), fewer than min_domains=3" in message
    assert f"{FLAKY!r}" in message
    assert resources["catalog"].latest_artifact("dsl_domain_specs", "all") is None


def test_min_domains_above_the_configured_training_domains_fails_before_asking_the_teacher(resources,
                                                                                            flaky_teacher):
    backend, teacher = flaky_teacher
    result = _run(resources, teacher, min_domains=4)
    assert not result.success and backend.attempts == 0
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "min_domains is 4 but domains has only 3 training domain(s)" in str(failure.event_specific_data.error)
