"""From a run configuration to the method's :class:`Objective`: DTM or one of its baselines.

``config.method`` names the method. DTM's settings live in ``config.dtm``;
each baseline's live in ``config.method_options`` and are validated here by
the baseline's own options model (unknown names and out-of-range values are
rejected with a message that names them). Everything else (learning rate,
rollouts, buffer, sampler, evaluation) comes from the shared sections of the
config, so the methods differ only in their loss (METHOD.md section 8).
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from tiltmatch.baselines import BaselineObjective, BaselineOptions
from tiltmatch.baselines.diffu_grpo import DiffuGRPOObjective, DiffuGRPOOptions
from tiltmatch.baselines.rejection import RejectionObjective, RejectionOptions
from tiltmatch.baselines.wd1 import WD1Objective, WD1Options
from tiltmatch.config import ConfigError, RunConfig, describe_validation_error
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.objective import Objective

#: each baseline's options model and objective class
BASELINES: dict[str, tuple[type[BaselineOptions], type[BaselineObjective]]] = {
    "diffu-grpo": (DiffuGRPOOptions, DiffuGRPOObjective),
    "wd1": (WD1Options, WD1Objective),
    "rejection": (RejectionOptions, RejectionObjective),
}


def _describe(method: str, model: type[BaseModel], err: ValidationError) -> str:
    known = ", ".join(model.model_fields)
    lines = describe_validation_error(err, unknown=f"unknown option (known: {known})")
    return "\n".join([f"invalid method_options for method {method!r}:", *lines])


def method_options(config: RunConfig) -> BaselineOptions | None:
    """The validated options of ``config.method``; None for DTM (its settings are ``dtm``)."""
    if config.method == "dtm":
        if config.method_options:
            names = ", ".join(sorted(config.method_options))
            raise ConfigError(
                f"method 'dtm' takes no method_options (got {names}); set its options "
                "in the 'dtm' section"
            )
        return None
    if config.method not in BASELINES:
        raise ConfigError(f"unknown method {config.method!r}; known: dtm, {', '.join(BASELINES)}")
    model, _ = BASELINES[config.method]
    try:
        return model.model_validate(config.method_options)
    except ValidationError as err:
        raise ConfigError(_describe(config.method, model, err)) from None


def make_objective(config: RunConfig, mask_token_id: int) -> Objective:
    """The :class:`Objective` of ``config.method``, with its options validated."""
    options = method_options(config)
    if options is None:
        return DTMObjective(config.dtm, mask_token_id)
    _, objective = BASELINES[config.method]
    return objective(options, mask_token_id)


def needs_reference(config: RunConfig) -> bool:
    """Whether the run needs a frozen copy of the base model (diffu-GRPO's KL term)."""
    # The mask id plays no part in this decision; any id builds the objective.
    return make_objective(config, mask_token_id=0).needs_reference
