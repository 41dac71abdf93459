"""Training: the local SGD loop, test-set evaluation and which clients train where."""

from .evaluate import evaluate
from .local import ClientResult, LocalTraining, train_client
from .schedule import assign_clients, sample_clients

__all__ = ["ClientResult", "LocalTraining", "assign_clients", "evaluate", "sample_clients", "train_client"]
