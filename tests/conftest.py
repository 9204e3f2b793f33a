"""Suite-wide settings.

The tests run many small models; on a machine with few cores, intra-op threads only add
contention (measured here: a training step took 0.84 s on one thread and 7.9 s on two
while the other core was busy). One thread for this process and for every subprocess.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
