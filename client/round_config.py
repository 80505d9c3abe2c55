"""What the coordinator tells a site each round, as one typed record.

The server builds a :class:`RoundConfig` and sends it as the message's ConfigRecord;
the ClientApp reads it back with :meth:`RoundConfig.from_record`. Keeping both directions
in one place keeps the keys in step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from models.features import Standardization
from models.spec import ModelSpec

# Keys of the records a site sends back.
SITE_RECORD = "site"  # ConfigRecord: {"name": site name}
NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class RoundConfig:
    """Everything a site needs to train or evaluate one round.

    Parameters
    ----------
    server_round, num_rounds : int
        This round and the run's total, so the site can plan its noise for the rest.
    federation, run_key : str
        Names the run in the site's ledger (stable across a coordinator restart).
    model_spec : ModelSpec
        The network to build.
    standardization : Standardization
        Federated feature scaling.
    schema_sha256 : str
        The federation schema's hash; a site with another schema refuses.
    local_epochs, batch_size, learning_rate : training settings.
    dp : bool
        Whether to train with DP-SGD.
    max_grad_norm : float
        Clipping norm.
    proximal_mu : float
        FedProx's μ (0 for FedAvg).
    seed : int
        For reproducible simulations.
    simulation_dir : str
        Set only in simulation: where the simulated sites' files are.
    """

    server_round: int
    num_rounds: int
    federation: str
    run_key: str
    model_spec: ModelSpec
    standardization: Standardization
    schema_sha256: str
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.1
    dp: bool = True
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.0
    seed: int = 0
    simulation_dir: str = ""

    def to_record_values(self) -> dict[str, Any]:
        values = asdict(self)
        values["model_spec"] = json.dumps(self.model_spec.to_dict())
        values["standardization"] = json.dumps(self.standardization.to_dict())
        return {k.replace("_", "-"): v for k, v in values.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundConfig:
        values = {k.replace("-", "_"): v for k, v in record.items()}
        values["model_spec"] = ModelSpec.from_dict(json.loads(values["model_spec"]))
        values["standardization"] = Standardization.from_dict(json.loads(values["standardization"]))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})
