"""Training: the local SGD loop (one client, or many side by side in one vectorised step), test-set evaluation
and which clients train where."""

from .batched import train_clients_batched
from .block_scores import evaluate
from .local import ClientResult, LocalTraining, train_client
from .schedule import assign_clients, sample_clients

__all__ = ["ClientResult", "LocalTraining", "assign_clients", "evaluate", "sample_clients", "train_client",
           "train_clients_batched"]
