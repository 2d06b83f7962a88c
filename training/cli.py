"""`whaleid synth | train | general | export | detector`."""

from training import data_cli, export_cli, general_cli, train_cli
from training.detector import cli as detector_cli


def register(subparsers) -> None:
    data_cli.register(subparsers)  # synth
    train_cli.register(subparsers)  # train
    general_cli.register(subparsers)  # general
    export_cli.register(subparsers)  # export
    detector_cli.register(subparsers)  # detector train | export
