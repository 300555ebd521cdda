"""Twenty-fourth session, kept as a record: the head's forward + backward (fbnet-cifar width 0.25: 88 -> 1,504
channels at 4 x 4, batch 64) with its products on torch (main) against our kernel (tried_head_on_small_gemm.diff),
in one process, 41 alternating rounds. Runs only with that diff applied (it switches head_fused's _mm_bn / mm /
mm_tn). ``--as-avx2``: emulated AVX2 (v3); ``--parts``: the forward's and the input gradient's product alone.
Printed (AMD EPYC Zen 4, 1 thread, three runs each, the machine noisy):
  v4: 21.27 -> 18.64 ms 1.141x; 16.41 -> 14.87 ms 1.103x (forward alone 1.021x, input gradient alone 1.047x)
  v3: 24.24 -> 24.77 ms 0.979x; 17.00 -> 17.44 ms 0.975x (forward 0.998x, input gradient 0.942x); 0.969x
      (forward 0.994x, input gradient 0.998x)
"""
import os, sys, time, torch, statistics
if "--as-avx2" in sys.argv:
    os.environ.update(dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2"))
import torch.nn.functional as F
from fbnet_fast.space import load_space
from fbnet_fast.supernet import Supernet
from fbnet_fast.ops import head_op, _ext
import fbnet_fast.ops.head_fused as hf
from fbnet_fast.ops.mixed_op_fused import _MMBN
from fbnet_fast.malloc import tune_malloc
tune_malloc()
if "--as-avx2" in sys.argv: _ext.load().set_isa("v3")
torch.set_num_threads(1)
new = dict(_mm_bn=hf._mm_bn, mm=hf.mm, mm_tn=hf.mm_tn)
old = dict(_mm_bn=lambda bn, a, b: _MMBN(torch.mm(a, b), None), mm=lambda a, b: torch.mm(a, b),
           mm_tn=lambda x, y: torch.mm(x.t(), y))
space = load_space("fbnet-cifar", width_mult=0.25)
net = Supernet(space, impl="cpp").to(memory_format=torch.channels_last)
x = torch.randn(64, 88, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
y = torch.randint(0, 10, (64,))
ts = {"old": [], "new": []}
outs = {}
for r in range(41):
    for name, d in (("old", old), ("new", new))[:: 1 if r % 2 else -1]:
        for k, v in d.items(): setattr(hf, k, v)
        net.zero_grad(set_to_none=True); x.grad = None
        t0 = time.perf_counter(); loss = F.cross_entropy(head_op(x, net.head, impl="cpp"), y); loss.backward()
        t = time.perf_counter() - t0
        if r: ts[name].append(t * 1e3)
        outs[name] = (loss.detach(), x.grad.clone(), net.head.conv.weight.grad.clone())
m = {k: statistics.median(v) for k, v in ts.items()}
print(f"isa {_ext.load().isa()} torch {torch.backends.cpu.get_cpu_capability()}: head fwd+bwd old {m['old']:.2f} ms new {m['new']:.2f} ms  {m['old']/m['new']:.3f}x")
print("max |dx| rel", ((outs['old'][1]-outs['new'][1]).abs().max() / outs['old'][1].abs().max()).item())
if "--parts" in sys.argv:
    for label, d in (("fwd only", dict(old, _mm_bn=new["_mm_bn"])), ("gx only", dict(old, mm=new["mm"]))):
        ts = {"old": [], "v": []}
        for r in range(41):
            for name, dd in (("old", old), ("v", d))[:: 1 if r % 2 else -1]:
                for k, v in dd.items(): setattr(hf, k, v)
                net.zero_grad(set_to_none=True); x.grad = None
                t0 = time.perf_counter(); loss = F.cross_entropy(head_op(x, net.head, impl="cpp"), y); loss.backward()
                if r: ts[name].append((time.perf_counter() - t0) * 1e3)
        m = {k: statistics.median(v) for k, v in ts.items()}
        print(f"  {label}: old {m['old']:.2f} ms, {m['v']:.2f} ms {m['old']/m['v']:.3f}x")
