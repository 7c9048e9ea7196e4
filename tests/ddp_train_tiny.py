"""Helper for test_distributed.py (not a test): train a tiny conv net, alone or as one rank of torchrun,
and save the weights (rank 0) to argv[1]."""
import sys

import torch
import torch.nn as nn

from autoprune.models import IMAGENET_MEAN, IMAGENET_STD
from autoprune.train import distributed
from autoprune.train.data import make_bundle
from autoprune.train.training import TrainRecipe, train

torch.set_num_threads(1)
distributed.init_from_env()
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
init = {k: v.clone() for k, v in net.state_dict().items()}
data = make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=200, calib_size=64, seed=0)
# 1,800 training images in batches of 100: 18 steps, the last epoch's batches all full
train(net, data, TrainRecipe(epochs=1.0, lr=0.05, batch_size=100), precision="fp32", progress=False)
if distributed.is_main():
    torch.save({"init": init, "trained": net.state_dict()}, sys.argv[1])
