"""Checks the peer venv: torch and torchvision import and torchvision's C++ NMS runs on CPU.

    .venv-peer/bin/python bench/peer/check.py
"""

import torch
import torchvision

boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1], [5, 5, 6, 6]])
keep = torchvision.ops.nms(boxes, torch.tensor([1.0, 0.5, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
print(f"peer venv ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"cuda available {torch.cuda.is_available()}")
