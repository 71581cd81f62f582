"""Running experiments: loading a config checked whole, the private SuperLink and `flwr run`,
`anther simulate`, the baselines, and the model and data a run needs."""
