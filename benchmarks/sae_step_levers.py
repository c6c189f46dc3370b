"""The pieces of one sparse SAE training step, each timed against the alternative we did not take.

    python benchmarks/sae_step_levers.py                 # d=1536, F=6144, batch 1024, k 32
    python benchmarks/sae_step_levers.py --d 3072 --ratio 4

Rows (median seconds over ``--repeats``, same process, same tensors):

- the encoder product x @ W_enc in fp32 and in bf16 (the ranking product, ``sae/base.py``), with
  W_enc stored [D, F]-major or feature-major;
- the exact re-read of the B·k chosen entries (sampled product) from each W_enc layout;
- the sparse W_enc gradient, and the copy autograd makes when its layout differs from W_enc's;
- Adam over W_enc and W_dec: the default per-op loop, ``foreach`` and ``fused``;
- argsort of B·k int64 keys and of the same keys as float64 (torch's CPU int sort is slow);
- BatchTopK's selection of the batch's top k·B from the bf16 pre-activations: each token's top 4k
  candidates, then the top k·B among them, ordered by token (what ``sae/batchtopk.py`` did), and
  the candidates above a bound sampled from 64 rows (what it does, ``BatchTopKSAE.select_active``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from monosemantic.sae import SAEConfig
from monosemantic.sae.batchtopk import BatchTopKSAE


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
    B, D, F, K = args.batch, args.d, args.ratio * args.d, args.k
    g = torch.Generator().manual_seed(0)
    x_BD = torch.randn(B, D, generator=g)
    W_DF = torch.randn(D, F, generator=g) / D**0.5
    W_feature_major = W_DF.T.contiguous().T
    idx_BK = (x_BD @ W_DF).topk(K, dim=1).indices.sort(dim=1).values
    rows_N = torch.arange(B).repeat_interleave(K)
    grad_N = torch.randn(B * K, generator=g)
    crow = torch.arange(0, B * K + 1, K)

    def reread(W):
        pattern = torch.sparse_csr_tensor(crow, idx_BK.flatten(), torch.zeros(B * K), (B, F), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, x_BD, W)

    def sparse_grad():
        G_FB = torch.sparse_coo_tensor(torch.stack([idx_BK.flatten(), rows_N]), grad_N, (F, B), check_invariants=False)
        return torch.sparse.mm(G_FB, x_BD).T

    rows = [
        ("x @ W_enc, fp32, [D, F]-major", lambda: x_BD @ W_DF),
        ("x @ W_enc, fp32, feature-major", lambda: x_BD @ W_feature_major),
        ("x @ W_enc, bf16 (incl. casts), [D, F]-major", lambda: x_BD.bfloat16() @ W_DF.bfloat16()),
        ("x @ W_enc, bf16 (incl. casts), feature-major", lambda: x_BD.bfloat16() @ W_feature_major.bfloat16()),
        ("exact re-read of B·k entries, [D, F]-major", lambda: reread(W_DF)),
        ("exact re-read of B·k entries, feature-major", lambda: reread(W_feature_major)),
        ("sparse W_enc gradient (feature-major result)", sparse_grad),
        ("  + copy into a [D, F]-major W_enc's layout", lambda: sparse_grad().contiguous()),
    ]
    adams = (("Adam, default", {}), ("Adam, foreach", {"foreach": True}), ("Adam, fused", {"fused": True}))
    for name, options in adams:
        params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((D, F), (F, D))]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        rows.append((f"{name} over W_enc and W_dec", torch.optim.Adam(params, lr=1e-4, **options).step))
    keys_N = rows_N * F + idx_BK.flatten()
    rows.append(("argsort of B·k int64 keys", keys_N.argsort))
    rows.append(("argsort of the same keys as float64", lambda: keys_N.double().argsort()))
    pre_bf16_BF = x_BD.bfloat16() @ W_DF.bfloat16()

    def per_token_candidates():
        cand_vals_BC, cand_idx_BC = pre_bf16_BF.topk(4 * K, dim=1, sorted=False)
        pos_N = cand_vals_BC.relu().flatten().topk(K * B, sorted=False).indices
        order_N = (pos_N // (4 * K)).double().argsort()
        return cand_idx_BC.flatten()[pos_N[order_N]]

    batchtopk = BatchTopKSAE(SAEConfig(variant="batchtopk", d_in=D, d_sae=F, k=K))
    rows.append(("BatchTopK selection, per-token top-4k first", per_token_candidates))
    rows.append(("BatchTopK selection, above a sampled bound", lambda: batchtopk.select_active(pre_bf16_BF)))

    print(
        f"d={D}, F={F}, batch {B}, k {K}, {args.threads} threads, median of {args.repeats}, torch {torch.__version__}"
    )
    print(f"{'step piece':<48}{'seconds':>10}")
    for name, fn in rows:
        print(f"{name:<48}{median_seconds(fn, args.repeats):>10.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
