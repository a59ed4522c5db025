"""The Kubernetes pod of each asset's step: ``dagster-k8s/config`` op tags, defined here and nowhere else.

Under the k8s executor (``ASTFORGE_EXECUTOR=k8s``, deploy/) every step runs in a pod of its own, and dagster-k8s
builds that pod from the step's ``dagster-k8s/config`` tag. The local executor ignores the tag. Three kinds of step:

- ``TRAINING_STEP``: the assets of the ``gpu`` pool (training, and the evaluations that run the trained models):
  one ``nvidia.com/gpu`` in the container's limits, a node selector and a toleration for GPU nodes.
- ``MODEL_STEP``: CPU steps that hold a whole model in memory (bases, tokenizers, GGUF exports, evaluations
  outside the pool): CPU and more memory, no GPU.
- ``DATA_STEP``: corpus and dataset steps: CPU and memory only.

Sizes, node selectors and tolerations are the ``DEFAULTS`` below. A cluster whose GPU nodes carry other labels or
taints overrides them without rebuilding the image: ``ASTFORGE_K8S_STEP_PODS`` holds YAML (or JSON), for instance
``{training: {node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}}}``; each field given replaces the
default's field whole (``node_selector: {}`` removes it). The code server, the run worker and the step pods must
see the same value: set it on the user code deployment (deploy/helm/values.yaml), which passes it to launched runs.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

# dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY (not imported: it would load the Kubernetes client with every asset)
K8S_CONFIG_TAG = "dagster-k8s/config"
OVERRIDES_ENV = "ASTFORGE_K8S_STEP_PODS"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class StepPod:
    """What one kind of step asks of Kubernetes: container resources and where the pod may be scheduled."""

    requests: Mapping[str, str]
    limits: Mapping[str, str]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def op_tags(self) -> dict[str, dict]:
        """The ``op_tags=`` of an asset: dagster-k8s's user-defined config (snake_case Kubernetes fields)."""
        config: dict[str, Any] = {
            "container_config": {"resources": {"requests": dict(self.requests), "limits": dict(self.limits)}},
        }
        pod_spec: dict[str, Any] = {}
        if self.node_selector:
            pod_spec["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            pod_spec["tolerations"] = [dict(t) for t in self.tolerations]
        if pod_spec:
            config["pod_spec_config"] = pod_spec
        return {K8S_CONFIG_TAG: config}


DEFAULTS: dict[str, StepPod] = {
    # `nvidia.com/gpu.present` is set by NVIDIA's GPU feature discovery (GPU operator); managed clusters taint GPU
    # nodes with `nvidia.com/gpu:NoSchedule` so that only pods that tolerate it land there.
    "training": StepPod(
        requests={"cpu": "4", "memory": "16Gi"},
        limits={"memory": "32Gi", GPU_RESOURCE: "1"},
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},),
    ),
    # Qwen2.5-0.5B in fp32 is 2 GB, and a GGUF export holds the HF model and its converted copy at once.
    "model": StepPod(requests={"cpu": "2", "memory": "8Gi"}, limits={"memory": "16Gi"}),
    "data": StepPod(requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "4Gi"}),
}

_FIELDS = ("requests", "limits", "node_selector", "tolerations")


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{OVERRIDES_ENV}: {where} must be a mapping, got {json.dumps(value)}")
    return {str(k): str(v) for k, v in value.items()}


def step_pods(overrides: str | None = None) -> dict[str, StepPod]:
    """The defaults, with the fields ``overrides`` (YAML or JSON text, as in ``ASTFORGE_K8S_STEP_PODS``) replaces."""
    pods = dict(DEFAULTS)
    if not overrides or not overrides.strip():
        return pods
    try:
        parsed = yaml.safe_load(overrides)
    except yaml.YAMLError as exc:
        raise ValueError(f"{OVERRIDES_ENV} is not valid YAML or JSON: {exc}") from exc
    if not isinstance(parsed, Mapping):
        raise ValueError(f"{OVERRIDES_ENV} must map step kinds ({', '.join(DEFAULTS)}) to fields, got {overrides!r}")
    for kind, fields in parsed.items():
        if kind not in DEFAULTS:
            raise ValueError(f"{OVERRIDES_ENV}: unknown step kind {kind!r}; expected one of {', '.join(DEFAULTS)}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"{OVERRIDES_ENV}: {kind} must map fields ({', '.join(_FIELDS)}) to values")
        changes: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in _FIELDS:
                raise ValueError(f"{OVERRIDES_ENV}: unknown field {kind}.{name}; expected one of {', '.join(_FIELDS)}")
            if name == "tolerations":
                if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
                    raise ValueError(f"{OVERRIDES_ENV}: {kind}.tolerations must be a list of Kubernetes tolerations")
                changes[name] = tuple(dict(t) for t in value)
            else:
                changes[name] = _string_map(value or {}, f"{kind}.{name}")
        pods[kind] = replace(pods[kind], **changes)
    return pods


STEP_PODS = step_pods(os.environ.get(OVERRIDES_ENV))
TRAINING_STEP = STEP_PODS["training"].op_tags()
MODEL_STEP = STEP_PODS["model"].op_tags()
DATA_STEP = STEP_PODS["data"].op_tags()

__all__ = ["DATA_STEP", "DEFAULTS", "K8S_CONFIG_TAG", "MODEL_STEP", "OVERRIDES_ENV", "STEP_PODS", "TRAINING_STEP",
           "StepPod", "step_pods"]
