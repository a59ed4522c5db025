"""The Kubernetes deployment, checked without a cluster: the k8s executor, the step pods dagster-k8s builds from the
assets' tags, the Dockerfile's install step, and the Helm values (deploy/).

The pod specs come from dagster-k8s's own functions, which the executor also uses: the code location's container
context (what the chart hands to launched runs: the user deployment's env, secrets, volumes and resources, from
deploy/helm/values.yaml), the step's tags from the execution plan merged onto it (``K8sContainerContext.merge``),
then ``construct_dagster_k8s_job``. Only the Kubernetes API call at the end is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._core.execution.api import create_execution_plan
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)

from assets import k8s_tags
from assets.k8s_tags import DATA_STEP, K8S_CONFIG_TAG, MODEL_STEP, TRAINING_STEP, step_pods
from definitions import defs
from jobs.executor import EXECUTOR_ENV, pool_recovering_executor, selected_executor

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
GPU = "nvidia.com/gpu"
IMAGE = "registry.example.com/astforge:test"


def _kind(tags: dict[str, str]) -> str | None:
    """training | model | data: which of k8s_tags' step kinds these (normalized) op tags carry."""
    if K8S_CONFIG_TAG not in tags:
        return None
    value = json.loads(tags[K8S_CONFIG_TAG])
    for kind, expected in (("training", TRAINING_STEP), ("model", MODEL_STEP), ("data", DATA_STEP)):
        if value == expected[K8S_CONFIG_TAG]:
            return kind
    return "other"


def _user_deployment() -> dict:
    (deployment,) = yaml.safe_load(VALUES.read_text())["dagster-user-deployments"]["deployments"]
    return deployment


def _code_location_context() -> K8sContainerContext:
    """What includeConfigInLaunchedRuns puts on every run pod, and the k8s executor on every step pod."""
    deployment = _user_deployment()
    return K8sContainerContext(
        env=deployment["env"], env_secrets=[secret["name"] for secret in deployment["envSecrets"]],
        volumes=deployment["volumes"], volume_mounts=deployment["volumeMounts"], resources=deployment["resources"])


def _step_pod(job_name: str, step_key: str):
    """The pod spec the k8s executor would submit for one step of ``job_name`` (K8sStepHandler.launch_step)."""
    plan = create_execution_plan(defs.resolve_job_def(job_name))
    step = plan.get_step_by_key(step_key)
    context = _code_location_context().merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step.tags)))
    run_id = "0d7b1f9e-53a3-4d5c-9a1e-6f0c2b8e4a71"
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image=IMAGE, dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{get_k8s_job_name(run_id, step_key)}",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job_name, "dagster/op": step_key, "dagster/run-id": run_id},
    )
    return job.spec.template.spec


# ------------------------------------------------------------------------------------------------ the executor


def test_default_executor_is_unchanged_and_a_typo_is_refused():
    jobs = defs.resolve_all_job_defs()
    assert jobs and {job.executor_def.name for job in jobs} == {pool_recovering_executor.name}
    assert selected_executor({}) is pool_recovering_executor
    assert selected_executor({EXECUTOR_ENV: "local"}) is pool_recovering_executor
    assert selected_executor({EXECUTOR_ENV: " K8S "}) is k8s_job_executor
    with pytest.raises(ValueError, match="'kubernetes' is not an executor.*'local'.*'k8s'"):
        selected_executor({EXECUTOR_ENV: "kubernetes"})


@pytest.mark.slow
def test_definitions_load_with_the_k8s_executor_for_every_job(tmp_path):
    """definitions.py imported afresh, as the code server and the run pods do with the chart's env."""
    probe = (
        "import json; from definitions import defs; "
        "print(json.dumps({'executors': {j.name: j.executor_def.name for j in defs.resolve_all_job_defs()}, "
        "'srl_adapter': defs.resolve_assets_def('srl_adapter').op.tags}))"
    )
    env = {
        **os.environ,
        EXECUTOR_ENV: "k8s",
        "ASTFORGE_HOME": str(tmp_path / "astforge"),
        k8s_tags.OVERRIDES_ENV: "training: {node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}}",
    }
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    executors = loaded["executors"]
    assert set(executors) >= {"ast_first_job", "dsl_job", "srl_job", "autocomplete_job", "graph_repair_job"}
    assert set(executors.values()) == {k8s_job_executor.name}
    # the override reached the tags dagster-k8s reads, and only the field it names changed
    pod_config = json.loads(loaded["srl_adapter"][K8S_CONFIG_TAG])
    assert pod_config["pod_spec_config"]["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod_config["container_config"]["resources"]["limits"][GPU] == "1"


# ------------------------------------------------------------------------------------------------ step pods


def test_training_step_pod_requests_a_gpu_on_gpu_nodes():
    pod = _step_pod("srl_job", "srl_adapter")
    (container,) = pod.containers
    assert container.image == IMAGE
    assert container.resources.limits[GPU] == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [(GPU, "Exists", "NoSchedule")]
    # the step's own sizes win over the code server's, which every launched pod inherits...
    training = k8s_tags.STEP_PODS["training"]
    assert container.resources.requests == dict(training.requests)
    assert container.resources.limits == dict(training.limits)
    assert container.resources.requests != _user_deployment()["resources"]["requests"]
    # ...while its env, secrets and shared volume reach the step
    deployment = _user_deployment()
    assert {e.name: e.value for e in container.env}["ASTFORGE_EXECUTOR"] == "k8s"
    assert [source.secret_ref.name for source in container.env_from] == ["astforge-env"]
    assert [m.mount_path for m in container.volume_mounts] == [deployment["volumeMounts"][0]["mountPath"]]
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes] == ["astforge-home"]


def test_data_and_model_step_pods_ask_for_cpu_and_memory_only():
    for job_name, step_key in (("ast_data_job", "code_units"), ("dsl_job", "dsl_dataset"),
                               ("ast_first_job", "ast_base_model")):
        (container,) = (pod := _step_pod(job_name, step_key)).containers
        resources = container.resources
        assert set(resources.requests) == {"cpu", "memory"}, step_key
        assert GPU not in resources.limits and GPU not in resources.requests, step_key
        assert pod.node_selector is None and pod.tolerations is None, step_key


def test_every_asset_has_a_step_pod_and_the_gpu_pool_is_exactly_the_training_kind():
    kinds = {}
    for spec in defs.resolve_all_asset_specs():
        op = defs.resolve_assets_def(spec.key).op
        kinds[spec.key.to_user_string()] = (_kind(op.tags), op.pool)
    untagged = sorted(name for name, (kind, _) in kinds.items() if kind in (None, "other"))
    assert not untagged, f"assets without one of k8s_tags' step kinds: {untagged}"
    mismatched = sorted(name for name, (kind, pool) in kinds.items() if (kind == "training") != (pool == "gpu"))
    assert not mismatched, f"training pods and the gpu pool disagree for: {mismatched}"
    assert {kind for kind, _ in kinds.values()} == {"training", "model", "data"}
    assert kinds["ast_corpus"][0] == "data" and kinds["pretrained_base"][0] == "model"


def test_tag_key_is_dagster_k8s_own():
    assert K8S_CONFIG_TAG == USER_DEFINED_K8S_CONFIG_KEY


def test_overrides_replace_single_fields_and_name_their_mistakes():
    pods = step_pods("training:\n  node_selector: {}\n  limits: {memory: 48Gi, nvidia.com/gpu: 2}\n"
                     "data: {requests: {cpu: 2, memory: 4Gi}}")
    training = pods["training"]
    assert training.limits == {"memory": "48Gi", GPU: "2"}
    assert training.node_selector == {} and training.tolerations == k8s_tags.DEFAULTS["training"].tolerations
    assert pods["data"].requests == {"cpu": "2", "memory": "4Gi"} and pods["model"] == k8s_tags.DEFAULTS["model"]
    # no node selector left: dagster-k8s builds a pod without one, still on the tolerated GPU taint
    config = get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(training.op_tags()[K8S_CONFIG_TAG])})
    assert "node_selector" not in config.pod_spec_config and config.pod_spec_config["tolerations"]
    assert step_pods("  ") == k8s_tags.DEFAULTS
    for text, message in (("gpu: {limits: {}}", "unknown step kind 'gpu'.*training"),
                          ("training: {nodeSelector: {}}", r"unknown field training\.nodeSelector"),
                          ("training: {tolerations: {key: x}}", "tolerations must be a list"),
                          ("data: {requests: [cpu]}", r"data\.requests must be a mapping"),
                          ("[training]", "must map step kinds"),
                          ("training: {limits: {", "not valid YAML or JSON")):
        with pytest.raises(ValueError, match=message):
            step_pods(text)


# ------------------------------------------------------------------------------------------------ Dockerfile


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    out = []
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    return out


def test_dockerfile_installs_with_the_makefile_target():
    instructions = _instructions(DOCKERFILE)
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    install_runs = [run for run in runs if re.search(r"\bmake\b(?:\s+\S+=\S*)*\s+install\b", run)]
    assert len(install_runs) == 1, runs
    assert not [run for run in runs if re.search(r"\bpip\d?\s+install\b", run)], "install through the Makefile only"
    assert re.search(r"^install:", (ROOT / "Makefile").read_text(), re.M), "the Makefile lost its install target"
    # the Makefile compiles llama.cpp: the image needs a compiler and cmake before `make install`
    apt = next(run for run in runs if "apt-get install" in run)
    assert {"build-essential", "cmake", "make"} <= set(apt.split())
    assert runs.index(apt) < runs.index(install_runs[0])
    # one Dockerfile, two variants: the base image and the torch wheel index are build args
    args = dict(arg.partition("=")[::2] for keyword, arg in instructions if keyword == "ARG")
    assert args["BASE"].startswith("python:3.11") and args["TORCH_INDEX"].endswith("/cpu")
    assert ("FROM", "${BASE}") in instructions
    assert "${TORCH_INDEX}" in install_runs[0]


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".dagster", ".astforge", "data"} <= ignored


# ------------------------------------------------------------------------------------------------ Helm values


def test_helm_values_run_this_image_with_the_k8s_launcher_and_postgres():
    values = yaml.safe_load(VALUES.read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True
    (deployment,) = user_code["deployments"]
    image = deployment["image"]
    assert image["repository"].endswith("/astforge") and image["tag"] and image["tag"] != "latest"

    # the code server loads what workspace.yaml loads, from the Dockerfile's working directory
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_file"]
    workdir = next(args for keyword, args in _instructions(DOCKERFILE) if keyword == "WORKDIR")
    assert deployment["dagsterApiGrpcArgs"] == ["-f", workspace["relative_path"], "-d", workdir]

    # run and step pods get the deployment's env: that is how they choose the k8s executor
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {item["name"]: item.get("value") for item in deployment["env"]}
    assert env[EXECUTOR_ENV] == "k8s"
    mounts = {mount["mountPath"] for mount in deployment["volumeMounts"]}
    assert env["ASTFORGE_HOME"] in mounts

    postgres = values["postgresql"]
    assert postgres["postgresqlHost"] and postgres["postgresqlDatabase"] and postgres["service"]["port"] == 5432
    if not postgres["enabled"]:  # an external server: its password from an existing Secret
        assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]
