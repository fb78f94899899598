"""The training side: datasets, trainers, evaluation, ONNX export and bundle writing.

Importing this package is cheap and torch-free; the submodules that train or export import torch.
"""
