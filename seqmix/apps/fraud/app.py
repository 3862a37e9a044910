"""The fraud app as the CLI sees it.

    seqmix fraud fit --config configs/fraud/synthetic.yaml              # train the autoencoder
    seqmix fraud cluster --config configs/fraud/synthetic_cluster.yaml  # embed, cluster, report

``cluster``: :mod:`seqmix.apps.fraud.commands`.
"""

from seqmix.apps.fraud.commands import cluster_command
from seqmix.apps.fraud.data import FraudDataModule
from seqmix.apps.fraud.model import SequenceAutoencoder
from seqmix.apps.spec import AppSpec

APP = AppSpec(
    name="fraud",
    description="Behaviour-sequence fraud clustering: Bi-LSTM autoencoder embeddings, pHDBSCAN, cluster rules",
    model_class=SequenceAutoencoder,
    datamodule_class=FraudDataModule,
    links=(("data.n_step_features", "model.n_features"), ("data.window", "model.max_len")),
    commands={"cluster": cluster_command},
)
