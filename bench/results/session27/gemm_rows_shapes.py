"""Per-shape time of the small-product kernel (gemm.mm) alone, 1 thread, median of 15 calls:
    PYTHONPATH=. python bench/results/session27/gemm_rows_shapes.py v4   (run with each build of _C to compare)"""
import sys, time, torch
from fbnet_fast.ops import gemm, _ext
_ext.load().set_isa(sys.argv[1])
torch.set_num_threads(1)
from fbnet_fast.malloc import tune_malloc; tune_malloc()
def t(f, n=15):
    f(); ts = []
    for _ in range(n):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return sorted(ts)[n // 2]
for M, K in ((32768, 144), (8192, 144), (32768, 48)):
    for N in (8, 16, 24, 32, 48):
        a = torch.randn(M, K); b = torch.randn(K, N); o = torch.empty(M, N)
        tk = t(lambda: gemm.mm(a, b, out=o))
        fl = 2 * M * K * N
        print(f"M {M:6d} K {K:4d} N {N:4d}  kernel {tk*1e3:7.3f} ms {fl/tk/1e9:6.1f} GF")
