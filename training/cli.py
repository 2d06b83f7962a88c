"""`whaleid synth | train | export`."""

from training import data_cli, export_cli, train_cli


def register(subparsers) -> None:
    data_cli.register(subparsers)  # synth
    train_cli.register(subparsers)  # train
    export_cli.register(subparsers)  # export
