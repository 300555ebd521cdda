# usage: python dwab.py ROOT THREADS -> json of median ms per shape
import sys, json, time
sys.path.insert(0, sys.argv[1])
import torch
from fbnet_fast.malloc import tune_malloc; tune_malloc()
import fbnet_fast; assert fbnet_fast.__file__.startswith(sys.argv[1]), fbnet_fast.__file__
from fbnet_fast.ops.dwconv_bn import dwconv_bn_forward, dwconv_bn_backward
torch.set_num_threads(int(sys.argv[2]))
import os
SH = [tuple(s) for s in json.loads(os.environ["SH"])] if "SH" in os.environ else [(64,32,32,48,5,1),(64,32,32,48,3,1),(64,32,32,24,5,1),(64,32,32,8,3,1),(64,32,32,8,5,2),(64,32,32,24,5,2),(64,16,16,48,5,1),(64,8,8,96,5,1),(64,8,8,96,3,1),(64,4,4,288,5,1)]
res = {}
for sh in SH:
    n,h,w,c,k,s = sh
    torch.manual_seed(0)
    z=torch.randn(n,h,w,c); a=torch.rand(c)+.5; b=torch.randn(c)*.1; wt=torch.randn(k*k,c)
    ho=(h-1)//s+1; g=torch.randn(n,ho,ho,c); cen=torch.randn(c)
    for name, f in (("fwd", lambda: dwconv_bn_forward(z,a,b,wt,s,stats=True)), ("bwd", lambda: dwconv_bn_backward(g,z,a,b,wt,s,cen,weight_grad=True))):
        f(); ts=[]
        for _ in range(7):
            t0=time.perf_counter(); [f() for _ in range(5)]; ts.append((time.perf_counter()-t0)/5*1e3)
        res[f"{name} {sh}"] = sorted(ts)[3]
print(json.dumps(res))
