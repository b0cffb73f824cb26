"""Cost of one LiSSA step per vector as more vectors share one vmapped chain (the m = 128 question).

    python benchmarks/studies/lissa_vectors.py
    MALLOC_MMAP_THRESHOLD_=1073741824 python benchmarks/studies/lissa_vectors.py   # large blocks kept in glibc's heap

image-cnn's differentiated layers (fc + head: 101,066 parameters) on 2,000 random 28×28 inputs
(speed does not depend on the data), LiSSA B = 1, 30 steps, fixed scale, all m vectors in one
block. Prints the median of 3 solves per m. At m = 128 one ``[m, P]`` float32 block is 52 MB,
above glibc's largest automatic mmap threshold (32 MB), so each such block is a fresh mapping that
the kernel zero-fills; at m = 64 (26 MB) freed blocks are reused from the heap.
"""
import time

import numpy as np
import torch

from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.solvers import LissaSettings, LissaSolver
from fastif_engine.models import DataInfo, create_model

torch.set_num_threads(2)
torch.manual_seed(0)
model = create_model("image-cnn", DataInfo("image", 10, (1, 28, 28)))
x = torch.randn(2000, 1, 28, 28)
y = torch.randint(0, 10, (2000,))
flat = FlatParams.of(model)
print("P", flat.size)
for m in (16, 64, 128):
    v = torch.randn(m, flat.size) * 1e-3
    solver = LissaSolver(model, x, y, LissaSettings(depth=30, batch_size=1, scale=100.0, damping=0.01), block=m)
    solver.solve(v)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        solver.solve(v)
        times.append(time.perf_counter() - t)
    step = np.median(times) / 30
    print(f"m {m}: {step * 1000:.1f} ms per step, {step / m * 1e6:.0f} us per vector-step")
