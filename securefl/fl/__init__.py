"""The federated loop: client training, update transport, the FedAvg strategy and the simulation."""
