"""The pieces of one sparse SAE training step, each timed against the alternative we did not take.

    python benchmarks/sae_step_levers.py                 # d=1536, F=6144, batch 1024, k 32
    python benchmarks/sae_step_levers.py --d 3072 --ratio 4

Rows (median seconds over ``--repeats``, same process, same tensors):

- the encoder product x @ W_enc in fp32 and in bf16 (the ranking product, ``sae/base.py``), with
  W_enc stored [D, F]-major or feature-major;
- the exact re-read of the B·k chosen entries (sampled product) from each W_enc layout;
- the sparse W_enc gradient, and the copy autograd makes when its layout differs from W_enc's;
- Adam over W_enc and W_dec: the default per-op loop, ``foreach`` and ``fused``;
- argsort of B·k int64 (token, feature) keys, and of the same keys as float64 and int32, and of
  the B·k feature ids (what ``feature_sums`` sorts: many repeats) as float64 and int32
  (``sae/base.py: argsort_keys``; int64 sorts turn slow when another process holds the cores);
- BatchTopK's selection of the batch's top k·B from the bf16 pre-activations: each token's top 4k
  candidates, then the top k·B among them, ordered by token (what ``sae/batchtopk.py`` did), and
  the candidates above a bound sampled from 64 rows (what it does, ``BatchTopKSAE.select_active``);
- the gradients of the sparse products: W_dec's and W_enc's Sᵀ G as a sparse [F, B]×[B, D] product
  against one ``embedding_bag`` over the entries sorted by feature (``sae/base.py: feature_sums``);
  ∂/∂vals of the sparse decode through ``embedding_bag``'s own backward against a sampled product;
- the decoder's gradient projection (parallel component removed, ``sae/trainer.py``) in four
  passes against a row-wise ``vecdot`` and one ``addcmul_`` (what the trainer does), and
  (``--compile``) compiled by ``torch.compile``, as is TopK's forward and backward (the compile
  times are printed);
- whole training steps (TopK and BatchTopK: forward, backward, projection, fused Adam,
  renormalisation): with glibc's default malloc against ``retained_cpu_memory`` (``cpu_memory.py``,
  what the trainer does), at 1 thread against ``--threads``, and at 2× and 4× the batch (seconds
  per ``--batch`` rows, so the rows compare directly), each beside the fp32 x @ W_enc it compares to.

Every row but the default-malloc step runs inside ``retained_cpu_memory``, as training does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F_

from monosemantic.cpu_memory import retained_cpu_memory
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.base import exact_entries, feature_sums
from monosemantic.sae.batchtopk import BatchTopKSAE
from monosemantic.sae.trainer import _normalise_rows, _project_out_parallel_grad


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved_medians(rows, outside_rows, warm, repeats: int) -> dict[str, float]:
    """Median seconds of every row, the rows taken in turn in each of ``repeats`` rounds (so a load
    that changes over the run weighs on all of them alike) after one untimed call each. ``rows``
    run inside ``retained_cpu_memory`` (entered once per round, then ``warm()`` refills its heap),
    ``outside_rows`` before it, with glibc's default malloc."""
    times: dict[str, list[float]] = {name: [] for name, _ in outside_rows + rows}
    for _ in range(repeats + 1):  # the first round is the untimed one
        for name, fn in outside_rows:
            times[name].append(seconds(fn))
        with retained_cpu_memory():
            warm()
            for name, fn in rows:
                times[name].append(seconds(fn))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def training_step(sae, optimizer, x_BD: torch.Tensor) -> None:
    """One step as ``train_sae`` takes it (no latent dead, so no AuxK)."""
    out = sae.training_output(x_BD, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 1.0)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    _project_out_parallel_grad(sae.W_dec)
    optimizer.step()
    _normalise_rows(sae.W_dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="add the torch.compile'd projection (compiles first)")
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
        ("W_enc gradient, sparse product (feature-major)", sparse_grad),
        ("  + copy into a [D, F]-major W_enc's layout", lambda: sparse_grad().contiguous()),
        ("W_enc gradient, embedding_bag by feature", lambda: feature_sums(rows_N, idx_BK.flatten(), grad_N, x_BD, F)),
    ]
    adams = (("Adam, default", {}), ("Adam, foreach", {"foreach": True}), ("Adam, fused", {"fused": True}))
    for name, options in adams:
        params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((D, F), (F, D))]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        rows.append((f"{name} over W_enc and W_dec", torch.optim.Adam(params, lr=1e-4, **options).step))
    keys_N = rows_N * F + idx_BK.flatten()
    rows.append(("argsort of B·k (token, feature) int64 keys", keys_N.argsort))
    rows.append(("argsort of the same keys as float64", lambda: keys_N.double().argsort()))
    rows.append(("argsort of the same keys as int32", lambda: keys_N.int().argsort()))
    rows.append(("argsort of the B·k feature ids as float64", lambda: idx_BK.flatten().double().argsort()))
    rows.append(("argsort of the B·k feature ids as int32", lambda: idx_BK.flatten().int().argsort()))
    pre_bf16_BF = x_BD.bfloat16() @ W_DF.bfloat16()

    def per_token_candidates():
        cand_vals_BC, cand_idx_BC = pre_bf16_BF.topk(4 * K, dim=1, sorted=False)
        pos_N = cand_vals_BC.relu().flatten().topk(K * B, sorted=False).indices
        order_N = (pos_N // (4 * K)).double().argsort()
        return cand_idx_BC.flatten()[pos_N[order_N]]

    batchtopk = BatchTopKSAE(SAEConfig(variant="batchtopk", d_in=D, d_sae=F, k=K))
    rows.append(("BatchTopK selection, per-token top-4k first", per_token_candidates))
    rows.append(("BatchTopK selection, above a sampled bound", lambda: batchtopk.select_active(pre_bf16_BF)))

    W_dec_FD = W_DF.T.contiguous().requires_grad_()
    vals_N = grad_N.clone().requires_grad_()
    offsets_B = torch.arange(0, B * K, K)
    grad_BD = torch.randn(B, D, generator=g)

    def vals_grad_by_embedding_bag():
        recon_BD = F_.embedding_bag(idx_BK.flatten(), W_dec_FD, offsets_B, mode="sum", per_sample_weights=vals_N)
        return torch.autograd.grad(recon_BD, vals_N, grad_BD)

    rows.append(("∂/∂vals of the decode, embedding_bag backward", vals_grad_by_embedding_bag))
    zeros_F = torch.zeros(F)
    rows.append(
        (
            "∂/∂vals of the decode, sampled product",
            lambda: exact_entries(grad_BD, W_dec_FD.detach().T, zeros_F, rows_N, idx_BK.flatten()),
        )
    )
    G_FD, unit_FD = torch.randn(F, D, generator=g), torch.nn.functional.normalize(torch.randn(F, D, generator=g), dim=1)
    unit_param = torch.nn.Parameter(unit_FD)
    unit_param.grad = G_FD
    rows.append(
        (
            "W_dec gradient projection, in 4 passes",
            lambda: unit_param.grad.sub_((unit_param.grad * unit_FD).sum(dim=1, keepdim=True) * unit_FD),
        )
    )
    rows.append(("W_dec gradient projection, vecdot + addcmul_", lambda: _project_out_parallel_grad(unit_param)))
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(lambda G, W: G - (G * W).sum(dim=1, keepdim=True) * W)
        compiled(G_FD, unit_FD)
        print(f"torch.compile of the projection: {time.perf_counter() - started:.1f} s to compile")
        rows.append(("W_dec gradient projection, torch.compile'd", lambda: G_FD.copy_(compiled(G_FD, unit_FD))))

    steps = {}
    for variant in ("topk", "batchtopk"):
        sae = build_sae(SAEConfig(variant=variant, d_in=D, d_sae=F, k=K, batch_size=B, lr=1e-4)).train()
        steps[variant] = (sae, torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True))
    if args.compile:
        topk_sae = steps["topk"][0]

        def forward_backward():
            topk_sae.training_output(x_BD, torch.zeros(F, dtype=torch.bool), 1.0).loss.backward()

        started = time.perf_counter()
        compiled_step = torch.compile(forward_backward)
        compiled_step()
        print(f"torch.compile of TopK's forward and backward: {time.perf_counter() - started:.1f} s to compile")
        rows.append(("TopK forward + backward, eager", forward_backward))
        rows.append(("TopK forward + backward, torch.compile'd", compiled_step))
    x_4B_D = torch.randn(4 * B, D, generator=g)

    def at_one_thread(fn):
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(args.threads)

    step_rows = [
        ("x @ W_enc, fp32 [D, F]-major (the floor)", lambda: x_BD @ W_DF),
        ("TopK step, freed memory kept", lambda: training_step(*steps["topk"], x_BD)),
        ("BatchTopK step, freed memory kept", lambda: training_step(*steps["batchtopk"], x_BD)),
        ("x @ W_enc, fp32, 1 thread", lambda: at_one_thread(lambda: x_BD @ W_DF)),
        ("TopK step, 1 thread", lambda: at_one_thread(lambda: training_step(*steps["topk"], x_BD))),
    ]
    for times in (2, 4):
        step_rows.append(
            (
                f"TopK step at batch {times}·B, per B rows",
                lambda n=times: training_step(*steps["topk"], x_4B_D[: n * B]),
            )
        )
    per_rows = {f"TopK step at batch {times}·B, per B rows": times for times in (2, 4)}

    outside = [("TopK step, glibc's default malloc", lambda: training_step(*steps["topk"], x_BD))]
    warm = lambda: training_step(*steps["topk"], x_BD)  # noqa: E731
    medians = interleaved_medians(rows + step_rows, outside, warm, args.repeats)
    print(
        f"d={D}, F={F}, batch {B}, k {K}, {args.threads} threads, median of {args.repeats}, torch {torch.__version__}"
    )
    print(f"{'step piece':<48}{'seconds':>10}")
    for name, _ in rows + step_rows[:1] + outside + step_rows[1:]:
        print(f"{name:<48}{medians[name] / per_rows.get(name, 1):>10.4f}")


if __name__ == "__main__":
    sys.exit(main())
