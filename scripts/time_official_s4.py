"""Time the unmodified official deep-S4 simulation (furiosa-ai/ssm-peft ``S4/run_s4.py``): Full fine-tuning at
the paper's model (d_model 64, 4 frozen layers, d_state 16; target 1 layer, d_state 8), on CPU or CUDA.

    cd OFFICIAL/S4 && python /path/to/scripts/time_official_s4.py BATCH SEQ ITERS [--device cpu|cuda] [--threads T]

Prints ``train_s=...`` (wall time of ``sim.train``). The per-iteration time is the difference of two runs'
``train_s`` divided by the difference of their ITERS (start-up and first iterations cancel); ``synthetic.bench
--official-dir`` does that. The same measurement as ``../shared/tools/time_official_s4_cpu.py`` with a device
argument; a measuring aid, not project code. The official folder needs ``environment.py`` and ``stubs/wandb``
as that tool's README says; transformers, torchvision and pandas are stubbed here (only names are imported).
"""
import argparse
import importlib.machinery as im
import os
import sys
import time
import types

a = argparse.ArgumentParser()
a.add_argument("batch", type=int)
a.add_argument("seq", type=int)
a.add_argument("iters", type=int)
a.add_argument("--device", default="cpu")
a.add_argument("--threads", type=int, default=2)
args = a.parse_args()

here = os.getcwd()
sys.path[:0] = [os.path.join(here, "stubs"), here]
for name in ("transformers", "torchvision", "torchvision.transforms", "pandas"):
    m = types.ModuleType(name)
    m.__spec__ = im.ModuleSpec(name, None)
    sys.modules[name] = m
sys.modules["transformers"].set_seed = lambda s: None
sys.modules["transformers"].HfArgumentParser = object
sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
sys.modules["torchvision.transforms"].InterpolationMode = type("IM", (), {"BILINEAR": 2, "NEAREST": 0, "BICUBIC": 3})

import torch  # noqa: E402

torch.set_num_threads(args.threads)
from run_s4 import DataConfigs, ModelConfigs, PeftConfigs, TrainingConfigs, simulation_s4d  # noqa: E402

tc = TrainingConfigs(n_epochs=args.iters, batch_size=args.batch, seq_len=args.seq, lr=5e-3, wandb=False,
                     warmup_epochs=20, warmup_lr=0.01, device=args.device)
mc = ModelConfigs(d_model=64, frozen_n_layers=4, frozen_d_state=16, dropout=0.0, task_type="regression")
pc = PeftConfigs(D_method="full", ssm_method="full", lp_method="full")
dc = DataConfigs(data="synthetic", target_n_layers=1, target_d_state=8)
sim = simulation_s4d(tc, mc, pc, dc)
if args.device.startswith("cuda"):
    torch.cuda.synchronize()
t0 = time.perf_counter()
sim.train(n_epochs=args.iters, model=sim.update_model, lp_method=pc.lp_method, ssm_method=pc.ssm_method)
if args.device.startswith("cuda"):
    torch.cuda.synchronize()
print(f"official {args.device} batch={args.batch} seq={args.seq} iters={args.iters} "
      f"train_s={time.perf_counter() - t0:.3f}")
