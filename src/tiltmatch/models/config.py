"""The ``model:`` section of the run config: a base checkpoint folder, or a tiny model's sizes."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from tiltmatch.models.dtypes import DTypeName
from tiltmatch.models.registry import DEFAULT_FAMILY, check_family_name
from tiltmatch.settings import StrictSection


class ModelConfig(StrictSection):
    """The denoiser: a base checkpoint folder, or a tiny model built from these sizes."""

    base: str | None = Field(
        None, description="folder of a base denoiser (save_pretrained layout), or 'shipped:maze'"
    )
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    family: str = Field(
        DEFAULT_FAMILY,
        description="architecture of a tiny model built from these sizes (a base folder's "
        "family is read from its files): a name in tiltmatch.models.registry.FAMILIES",
    )
    block_size: int = Field(4, ge=1, description="block size of a tiny block diffusion model")
    # Large-model settings (LLaDA-8B; METHOD.md section 6 recipes), read by
    # tiltmatch.models.quantisation and tiltmatch.training.lora.
    dtype: DTypeName = Field(
        "float32", description="dtype of the base weights (bfloat16 for LLaDA-8B)"
    )
    load_in_4bit: bool = Field(
        False, description="NF4 base via bitsandbytes (needs lora and a Llama-format folder)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward (non-reentrant) to save memory"
    )

    @field_validator("family")
    @classmethod
    def _registered_family(cls, name: str) -> str:
        return check_family_name(name)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        return self
