"""Saves safetensors weights as a training checkpoint the way MONAI's self-supervised Swin
weights and DataParallel runs are saved: torch.save({"state_dict": {"module." + name: tensor},
"epoch": 3}) in torch's zip format.

Usage: save_checkpoint.py IN.safetensors OUT.pt
"""
import sys

import torch
from safetensors.torch import load_file

weights = load_file(sys.argv[1])
torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in weights.items()}}, sys.argv[2])
