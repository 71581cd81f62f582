"""Every name that crosses a Flower message between anther's ServerApp and its ClientApps.

The ServerApp and the ClientApp are separate programs that may run different copies of anther
(a site upgrades later than the server); what they agree on is these strings, so each is
defined here once and both sides use it by name. Names a strategy sends to its own client half
(``fisher-batches``, ``proximal-mu``, ...) are that strategy's, defined in its module next to
both halves (docs/strategies.md).
"""

from __future__ import annotations

# -- run config: ``[tool.flwr.app.config]`` in pyproject.toml, ``flwr run --run-config``
RUN_EXPERIMENT = "experiment"  # the Hydra experiment: a name (anther/configs/<name>.yaml) or a YAML file's path
RUN_CONFIG_DIR = "config-dir"  # a folder of experiments and config groups looked in before the package's
RUN_OVERRIDES = "overrides"  # Hydra overrides, space separated
RUN_RESUME = "resume"  # an earlier run's folder to continue; "" starts a new run

# -- node config: a SuperNode's ``--node-config``; in a simulation, Flower sets the first two
PARTITION_ID = "partition-id"  # also a QUERY answer's and every reply's metric
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"  # the site's own data folder, instead of a partition of the run's
ADAPTER_RANK = "adapter-rank"  # the NanoAdapter rank this node trains; also a round-config key and a metric
STATE_DIR = "state-dir"  # where the node keeps its Context.state between runs (anther.client.state_store)
DP_SAMPLING_SEED = "dp-sampling-seed"  # a site's own seed for its DP batches and noise (never the server's)
# a site's privacy policy (anther.client.privacy_policy): the least it accepts, whatever the server asks
DP_MIN_NOISE = "dp-min-noise-multiplier"
DP_MAX_GRAD_NORM = "dp-max-grad-norm"
DP_MAX_EPSILON = "dp-max-epsilon"  # over the run, at DP_POLICY_DELTA
DP_POLICY_DELTA = "dp-policy-delta"
DP_UNNOISED_METRICS = "dp-unnoised-metrics"  # whether train loss and own-split metrics may leave under DP
BACKBONE_ADDRESS = "backbone-address"  # how this site reaches the backbone service (anther.backbone.endpoint)
BACKBONE_CA = "backbone-ca"
BACKBONE_TOKEN_FILE = "backbone-token-file"
BACKBONE_CERT = "backbone-cert"
BACKBONE_KEY = "backbone-key"

# -- records of a message's RecordDict
ARRAYS = "arrays"  # ArrayRecord: the adapters (Flower's strategies' default arrayrecord_key)
CONFIG = "config"  # ConfigRecord: the round config (Flower's default configrecord_key)
METRICS = "metrics"  # MetricRecord of a reply
INFO = "info"  # ConfigRecord: a QUERY answer (partition-id, num-partitions, adapter-rank, holdings)
HOLDINGS = "holdings"  # in a QUERY answer: JSON of what the node holds (anther.data.partition_report)
TIMING = "timing"  # ConfigRecord of a train reply: TRAIN_SECONDS (no strategy averages a ConfigRecord)
PRIVACY = "privacy"  # ConfigRecord of a train reply under sample-level DP: DP_RANDOMNESS
DECLINED = "declined"  # ConfigRecord of a reply to a round the client will not train: DECLINE_*

# -- round config: keys of the CONFIG record every train and evaluate message carries
SERVER_ROUND = "server-round"  # set by Flower's strategies
EXPERIMENT = "experiment"  # the whole experiment config, as YAML
RUN_KEY = "run-key"  # the run folder's name, the same before and after a resume
LOCAL_STEPS = "local-steps"  # this node's local steps this round, when a strategy sets them (else train.local_steps)
LOCAL_EPOCHS = "local-epochs"  # or this many passes over the node's own training data (ceil(epochs * n / batch))

# -- metrics of a reply (MetricRecord METRICS)
NUM_EXAMPLES = "num-examples"  # Flower's strategies weight by it
NUM_IMAGE_EXAMPLES = "num-image-examples"  # samples with an image
NUM_TEXT_EXAMPLES = "num-text-examples"  # samples with a text context
TRAIN_LOSS = "train_loss"  # task loss of the round's local training, without regularisers
LOCAL_STEPS_TAKEN = "local_steps"  # how many local steps the node took this round
ACTIVATION_BYTES_UP = "activation_bytes_up"  # what the client sent the backbone this round
ACTIVATION_BYTES_DOWN = "activation_bytes_down"
DP_EPSILON = "dp_epsilon"  # sample-level DP: the epsilon this node has spent in the run so far

# -- TIMING record
TRAIN_SECONDS = "train_seconds"

# -- DECLINED record
DECLINE_STATUS = "status"  # REFUSED or BUDGET_EXHAUSTED
REFUSED = "refused"  # the round's privacy is weaker than the site's policy
BUDGET_EXHAUSTED = "budget-exhausted"  # the round would take the site past its epsilon budget
DECLINE_REASON = "reason"

# -- PRIVACY record
DP_RANDOMNESS = "dp-randomness"  # where the client's DP batches and noise came from: "secret" or "site-seeded"
