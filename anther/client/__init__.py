"""The client side of a round: local split-learning training, DP-SGD, evaluation, private labels,
the runtime a client process keeps between messages, its state on disk, and the extras API a
strategy's client half is written against. The ClientApp that composes them is anther/client_app/."""
