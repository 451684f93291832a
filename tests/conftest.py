"""Unit tests use tiny models, for which one torch thread is fastest and never oversubscribes."""

import torch

torch.set_num_threads(1)
