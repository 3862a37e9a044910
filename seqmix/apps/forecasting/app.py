"""The forecasting app for ``seqmix forecasting fit|validate|test|predict`` (predict: :mod:`.commands`)."""

from seqmix.apps.forecasting.data import ForecastDataModule
from seqmix.apps.forecasting.model import Forecaster
from seqmix.apps.forecasting.commands import predict_command
from seqmix.apps.spec import AppSpec

APP = AppSpec(
    name="forecasting",
    description="Informer (ProbSparse attention, distilling, generative decoder) and baselines on ETT / "
                "Weather / Exchange / ILI CSVs, any mixer swappable",
    model_class=Forecaster,
    datamodule_class=ForecastDataModule,
    links=(
        ("data.n_vars", "model.n_vars"),
        ("data.n_out", "model.n_out"),
        ("data.n_time_features", "model.n_time_features"),
        ("data.seq_len", "model.seq_len"),
        ("data.label_len", "model.label_len"),
        ("data.pred_len", "model.pred_len"),
    ),
    commands={"predict": predict_command},
)
