"""Compute: where training runs (cpu/cuda), in which precision, quantized or not, with which backend."""

import dagster as dg
from pydantic import ValidationInfo, field_validator

from ml.compute import ComputePlan, check_choice, resolve_compute


class ComputeResource(dg.ConfigurableResource):
    """Each field is ``auto`` by default: CUDA when present, bf16 on GPU, 4-bit only with CUDA +
    bitsandbytes, the unsloth backend only with CUDA and the ``gpu`` extra installed."""

    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    quantization: str = "auto"  # auto | 4bit | none
    backend: str = "auto"  # auto | hf | unsloth

    # Strings, not Literals: the aliases ml.compute accepts (bfloat16, nf4, transformers, ...) stay valid.
    @field_validator("device", "precision", "quantization", "backend")
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        check_choice(info.field_name, value)  # an unknown name fails when the resource is built, before any step
        return value

    def plan(self, precision: str = "auto") -> ComputePlan:
        """The resolved plan; ``precision`` other than ``auto`` overrides the resource's (a training asset's own
        ``precision`` setting)."""
        try:
            return resolve_compute(self.device, self.precision if precision == "auto" else precision,
                                   self.quantization, self.backend)
        except ValueError as exc:
            raise dg.Failure(f"compute resource: {exc}") from exc
