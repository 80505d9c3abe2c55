"""The coordinator's run settings, read from Flower's run config.

Every field but ``sites`` (which ``flwr run`` takes from the number of SuperNodes) has its
default written again in ``pyproject.toml``'s ``[tool.flwr.app.config]``, which
tests/unit/server/test_settings.py keeps equal; ``flwr run . --run-config 'key=value'`` or
``fedcare simulate`` options override them.
Values are checked here so a typo fails before any site is contacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
MODES = ("simulation", "deployment")
PARTITIONS = ("iid", "dirichlet", "size")
CLASS_WEIGHTS = ("none", "balanced")
# What a data-dir federation's report and header say of its partitioning.
PARTITION_AS_GIVEN = "as given"
SECURE_AGGREGATION = ("auto", "on", "off")
# Aggregators that look at each site's update: impossible when the server only sees the sum.
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum")


class SettingsError(ValueError):
    """A run-config value is out of range; the message names the key."""


@dataclass(frozen=True)
class RunSettings:
    """What one federated training run does.

    Parameters
    ----------
    mode : str
        ``simulation`` (the coordinator prepares simulated hospitals from ``dataset`` or
        ``data-dir``) or ``deployment`` (real sites bring their own data).
    num_server_rounds : int
        Rounds in the whole run (a resumed run keeps the same total).
    local_epochs, learning_rate, batch_size : int, float, int
        Local SGD at each site. ``batch_size`` is the expected batch under Poisson
        sampling; the default 128 makes each round one full-batch noisy step at a site
        of at most 128 training rows (fewer, larger noisy steps: chosen by
        benchmarks/utility_methods.py on Breast Cancer Wisconsin at ε = 1).
    strategy : str
        One of ``STRATEGIES``; FedAvg by default.
    proximal_mu : float
        FedProx's μ.
    server_learning_rate : float
        FedAdam's server step size η.
    model : str
        Model family (see ``models.spec.families``), or ``auto``: the data kind's
        default (``logreg`` for tables, ``cox_linear`` for survival, ``cnn`` for images,
        ``gru`` for sequences, ``logreg`` for notes).
    hidden : str
        Comma-separated hidden widths of an MLP.
    class_weights : str
        ``none``, or ``balanced``: weight each class's loss by ``n / (classes × n_class)``
        from the federation's pooled class counts (for imbalanced classes).
    dp : bool
        DP-SGD at the sites (on by default).
    max_grad_norm : float
        Per-example clipping norm.
    epsilon, delta : float
        In simulation, each simulated site's ε budget and δ. In deployment, each site
        sets its own budget; δ is sent as the federation's δ.
    statistics_epsilon_share : float
        The share, in [0, 1), of the ε each site has left for the run that the federated
        statistics (for standardization and class weights) may cost; training plans its
        noise within the rest. 0 (the default): no statistics are released and every
        numeric feature is scaled by its declared range (midpoint, quarter width); with
        a few hundred rows per federation the noisy statistics cost more ε than they
        help (benchmarks/results/utility_methods.md). Balanced class weights need them.
    min_sites : int
        Fewest sites a round needs; fewer replies and the round's update is skipped.
    dataset, data_dir, sites, partition, alpha, seed : simulation inputs.
    test_fraction : float
        Share of the data held out as the global test set in simulation.
    personalize_epochs : int
        After the last round, each site fine-tunes the global model on its own training
        part for this many epochs, with DP and in its ledger like a round (each site's
        noise plan reserves room for it); the personalized model stays in the site's
        state folder and only its validation metrics are sent. 0: no personalization.
    audit_canaries : int
        Simulation only: audit canaries per site for the one-run privacy audit
        (``simulations.audit``); each joins its site's training data on a secret coin,
        and the coordinator keeps every round's updates to score them. 0: no audit.
    schema_path, test_path : str
        In deployment: the federation's schema, and an optional test set the
        coordinator may evaluate on.
    federation : str
        The federation's name (recorded in every site's ledger).
    out_dir : str
        Where checkpoints, the report and the registry go.
    resume : bool
        Continue from the last checkpoint in ``out_dir``.
    round_timeout : float
        Seconds to wait for the sites' replies each round.
    reply_poll_interval : float
        Seconds between the coordinator's pulls for missing replies during an exchange
        (Flower 1.41's deployed grid waits 3 s; see server/federation/exchange.py).
    signing_key : str
        The coordinator's Ed25519 model-signing key (PKCS#8 PEM); when set, the registered
        model's manifest is signed with it.
    secure_aggregation : str
        ``auto`` (on in deployment, off in simulation), ``on`` or ``off``. With it on, the
        sites' updates go through Flower's SecAgg+ and the coordinator sees only their sum;
        the robust aggregators (``ROBUST_STRATEGIES``) are then refused.
    secagg_num_shares, secagg_reconstruction_threshold : float
        SecAgg+: the share of the round's sites each site splits its secrets among (1.0:
        all), and the share of those shares needed to reconstruct a dropped site's mask.
        A round survives as long as every site keeps that many live neighbours.
    secagg_clipping_range : float
        SecAgg+ clips every weight (times the site's weight factor, at most 1) to
        [-range, range] before quantizing; sites report how many values they clipped.
    secagg_quantization_bits : int
        SecAgg+ maps [-range, range] onto 2**bits integers (the rounding step is
        2 × range / 2**bits per site).
    secagg_max_weight : float
        The largest training-set size a site may weigh in with; a site's weight factor is
        its size divided by this.
    site_preparer : str
        ``module:function`` that lays out the simulated sites in simulation mode (loaded
        by the ServerApp under ``flwr run``, as Flower loads ``server.app:app``).
    """

    mode: str = "simulation"
    num_server_rounds: int = 10
    local_epochs: int = 1
    learning_rate: float = 2.0
    batch_size: int = 128
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.05
    model: str = "auto"
    hidden: str = "32"
    class_weights: str = "none"
    dp: bool = True
    max_grad_norm: float = 1.0
    epsilon: float = 1.0
    delta: float = 1e-5
    statistics_epsilon_share: float = 0.0
    min_sites: int = 2
    dataset: str = "breast_cancer"
    data_dir: str = ""
    sites: int = 5
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2
    personalize_epochs: int = 0
    audit_canaries: int = 0
    schema_path: str = ""
    test_path: str = ""
    federation: str = "default"
    out_dir: str = "fedcare-runs/flwr-run"
    resume: bool = False
    round_timeout: float = 600.0
    reply_poll_interval: float = 0.1
    signing_key: str = ""
    secure_aggregation: str = "auto"
    secagg_num_shares: float = 1.0
    secagg_reconstruction_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    secagg_quantization_bits: int = 22
    secagg_max_weight: float = 10000.0
    site_preparer: str = "simulations.prepare:prepare_sites"

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, "mode", f"one of {MODES}"),
            (self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}"),
            (self.partition in PARTITIONS, "partition", f"one of {PARTITIONS}"),
            (self.class_weights in CLASS_WEIGHTS, "class-weights", f"one of {CLASS_WEIGHTS}"),
            (self.num_server_rounds >= 1, "num-server-rounds", "at least 1"),
            (self.local_epochs >= 1, "local-epochs", "at least 1"),
            (self.batch_size >= 1, "batch-size", "at least 1"),
            (self.learning_rate > 0, "learning-rate", "positive"),
            (self.max_grad_norm > 0, "max-grad-norm", "positive"),
            (self.epsilon > 0, "epsilon", "positive"),
            (0 < self.delta < 1, "delta", "in (0, 1)"),
            (
                0 <= self.statistics_epsilon_share < 1,
                "statistics-epsilon-share",
                "in [0, 1)",
            ),
            (
                self.statistics_epsilon_share > 0 or self.class_weights == "none",
                "class-weights",
                "'none' when statistics-epsilon-share is 0 (balanced weights need the "
                "sites' class counts)",
            ),
            (self.min_sites >= 1, "min-sites", "at least 1"),
            (
                0.01 <= self.reply_poll_interval <= 60,
                "reply-poll-interval",
                "within [0.01, 60] seconds",
            ),
            (self.sites >= 1, "sites", "at least 1"),
            (self.alpha > 0, "alpha", "positive"),
            (0 < self.test_fraction < 1, "test-fraction", "in (0, 1)"),
            (self.personalize_epochs >= 0, "personalize-epochs", "0 (off) or more"),
            (self.audit_canaries >= 0, "audit-canaries", "0 (off) or more"),
            (
                self.secure_aggregation in SECURE_AGGREGATION,
                "secure-aggregation",
                f"one of {SECURE_AGGREGATION}",
            ),
            (0 < self.secagg_num_shares <= 1, "secagg-num-shares", "in (0, 1]"),
            (
                0 < self.secagg_reconstruction_threshold <= 1,
                "secagg-reconstruction-threshold",
                "in (0, 1]",
            ),
            (self.secagg_clipping_range > 0, "secagg-clipping-range", "positive"),
            (8 <= self.secagg_quantization_bits <= 28, "secagg-quantization-bits", "in [8, 28]"),
            (self.secagg_max_weight >= 1, "secagg-max-weight", "at least 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise SettingsError(
                    f"run config '{key}' = {self._value(key)!r}: expected {expected}"
                )
        if self.mode == "deployment" and not self.schema_path:
            raise SettingsError("run config 'schema-path' is required in deployment mode")
        if self.audit_canaries and (self.mode != "simulation" or self.uses_secure_aggregation):
            raise SettingsError(
                "run config 'audit-canaries' is for simulations without secure aggregation: "
                "canaries are never put in a real site's data, and the audit scores each "
                "site's own updates"
            )
        if self.uses_secure_aggregation and self.strategy in ROBUST_STRATEGIES:
            raise SettingsError(
                f"strategy '{self.strategy}' needs every site's own update, but secure "
                "aggregation (on by default in deployment) shows the coordinator only their "
                'sum: choose fedavg, fedprox or fedadam, or set secure-aggregation="off" to '
                "give up secure aggregation for robust aggregation"
            )

    @property
    def uses_secure_aggregation(self) -> bool:
        """Whether this run aggregates through SecAgg+ (``auto``: only in deployment)."""
        if self.secure_aggregation == "auto":
            return self.mode == "deployment"
        return self.secure_aggregation == "on"

    def _value(self, key: str) -> Any:
        return getattr(self, key.replace("-", "_"))

    @property
    def planned_rounds(self) -> int:
        """The releases each site plans its noise for: the rounds, then personalization.

        Personalization counts as the rounds of ``local-epochs`` it takes (rounded up),
        so the site's noise plan leaves room for it within the run's budget.
        """
        return self.num_server_rounds + -(-self.personalize_epochs // self.local_epochs)

    @property
    def hidden_sizes(self) -> list[int]:
        """``hidden`` as a list of widths (:class:`SettingsError` if it is not one)."""
        try:
            return [int(h) for h in str(self.hidden).split(",") if h.strip()]
        except ValueError as err:
            raise SettingsError(
                f"run config 'hidden' = {self.hidden!r}: expected e.g. '64,32'"
            ) from err

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Build from Flower's run config (kebab-case keys); unknown keys are refused."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise SettingsError(f"unknown run config key '{key}'")
            default = known[name].default
            try:
                if isinstance(default, bool):
                    value = value if isinstance(value, bool) else str(value).lower() == "true"
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                else:
                    value = str(value)
            except (TypeError, ValueError) as err:
                raise SettingsError(f"run config '{key}' = {value!r}: wrong type") from err
            values[name] = value
        return cls(**values)

    @property
    def partition_done(self) -> str:
        """How the sites' data was split: ``partition``, or "as given" for a ``data-dir``.

        A ``data-dir`` federation keeps each site's file whole: no partitioning happens.
        """
        return PARTITION_AS_GIVEN if self.data_dir else self.partition

    def to_dict(self) -> dict[str, Any]:
        """Every field by its (underscore) name (what checkpoints and reports record)."""
        return asdict(self)
