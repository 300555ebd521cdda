"""Memory-traffic model of the mixed op: bytes read + written, fused vs eager.

``python bench/cpu/traffic_model.py`` prints BENCHMARKS.md's traffic table. Every pass
over a tensor is assumed to go to DRAM (no cache reuse between ops), fp32, weights
ignored (< 1% of the bytes). Counts per IR candidate, in units of one tensor:

eager forward   conv_pw R x W z1; bn1 2R z1 (stats, apply) W; relu R W; [shuffle R W];
                conv_dw R h1 W z2; bn2 2R W; relu R W; conv_pwl R h2 W z3; bn3 2R W;
                w_i * y R W; sum R R W
eager backward  sum/mul R g W g_i, dot R g R y; bn3 R g R z3 (sums) R g R z3 W;
                conv_pwl R g R h2 (dW) R g W gh2; relu R g R h2 W; bn2 5; conv_dw R g R h1
                (dW) R g W gh1; relu 3; bn1 5; [shuffle R W]; conv_pw R g R x (dW) R g W gx;
                gx accumulate R R W
fused forward   GEMM R x W z1; stats R z1; dwconv R z1 W z2; bn2+relu R z2 W h2; GEMM R h2 W z3;
                stats R z3; accumulate R z3 R out W out
fused backward  recompute (GEMM R x W z1; dwconv R z1 W z2; bn2+relu R z2 W h2; GEMM R h2 W z3);
                bn3 sums R g R z3, apply R g R z3 W gz3; GEMMs R gz3 R h2, R gz3 W gh2;
                bn2 sums R gh2 R z2, apply R gh2 R z2 W; dwconv bwd R gz2 R z1 W gu1;
                bn1 apply R gu1 R z1 W gz1; GEMMs R gz1 R x, R gz1 R gx W gx
"""

from __future__ import annotations

from fbnet_fast.space import FBNET_CANDIDATES, load_space, parse_candidate

BW = 3e12  # bytes/s, an H100's HBM3


def traffic(spec, batch):
    """(eager_fwd, eager_bwd, fused_fwd, fused_bwd) bytes for all 9 candidates active."""
    m_in, m_out = batch * spec.in_size ** 2, batch * spec.out_size ** 2
    x, out = m_in * spec.c_in, m_out * spec.c_out
    ef = eb = ff = fb = 0
    for name in FBNET_CANDIDATES:
        c = parse_candidate(name)
        if c.kind == "skip":
            if spec.stride == 1 and spec.c_in == spec.c_out:
                ef += 2 * out + 3 * out
                eb += 2 * out + 2 * out
                ff += 0
                fb += 2 * out
            else:  # 1x1 conv + BN + ReLU
                ef += (x + out) + 3 * out + 2 * out + 2 * out + 3 * out
                eb += 4 * out + 5 * out + 3 * out + 3 * out + 3 * x
                ff += (x + out) + out + 3 * out
                fb += (x + out) + 2 * out + 3 * out + 3 * out + 3 * x
            continue
        mid = c.mid_channels(spec.c_in)
        z1, z2 = m_in * mid, m_out * mid
        shuffle = 2 * z1 if c.groups > 1 else 0
        ef += (x + z1) + 3 * z1 + 2 * z1 + shuffle + (z1 + z2) + 3 * z2 + 2 * z2 + (z2 + out) + 3 * out \
            + 2 * out + 3 * out
        eb += 4 * out + 5 * out + (2 * out + z2) + (out + z2) + 3 * z2 + 5 * z2 + (z2 + z1) + (z2 + z1) \
            + z1 + 3 * z1 + 5 * z1 + shuffle + (z1 + x) + (z1 + x) + 3 * x
        ff += (x + z1) + z1 + (z1 + z2) + 2 * z2 + (z2 + out) + out + 3 * out
        fb += (x + z1) + (z1 + z2) + 2 * z2 + (z2 + out) + 2 * out + 3 * out + (out + z2) + (out + z2) \
            + 2 * z2 + 3 * z2 + (z2 + 2 * z1) + 3 * z1 + (z1 + x) + 3 * x
    return tuple(4 * v for v in (ef, eb, ff, fb))


CASES = [("fbnet-cifar", 2, 32), ("fbnet-cifar", 5, 32), ("fbnet-cifar", 10, 32), ("fbnet-cifar", 18, 32),
         ("fbnet", 1, 8), ("fbnet", 6, 8), ("fbnet", 14, 8)]


def main():
    print("| case | eager fwd+bwd GB | fused fwd+bwd GB | fused/eager | eager @3TB/s | fused @3TB/s |")
    print("|---|---|---|---|---|---|")
    for space, layer, batch in CASES:
        spec = load_space(space).layers[layer]
        ef, eb, ff, fb = traffic(spec, batch)
        e, f = ef + eb, ff + fb
        name = f"{space} L{layer:02d} {spec.c_in}->{spec.c_out} s{spec.stride} {spec.in_size}px b{batch}"
        print(f"| {name} | {e / 1e9:.3f} | {f / 1e9:.3f} | {f / e:.2f} | {e / BW * 1e6:.0f} us | {f / BW * 1e6:.0f} us |")


if __name__ == "__main__":
    main()
