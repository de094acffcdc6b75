"""How the MANGO flow's cost grows with the token count N.

Expected, per ICA layer over h = N/2 tokens of width D: the attention matrix costs O(h^2 D) time
(Q K^T and A X2) and O(h^2) memory (per batch item), the projections O(h D^2); the inverse's
triangular solve is O(h^2 D). LICA's N x N token mixing adds O(N^2 D) time and O(N^2)
parameters; the coupling is O(N D^2). So a block is O(N^2 D + N D^2) in time and O(N^2 + N D)
in activation memory: linear while N << D, quadratic once the attention terms dominate.

Time is the median of a few forward+backward passes of one full block (2 MMCA + 4 IMCA + 2 LICA
+ coupling). Memory is what autograd saves for the backward pass (summed over saved tensors,
each storage counted once), which is the part that grows with N; on CUDA the allocator's peak
is printed too. Ratios are against the smallest N, from one run on one machine.

    python benchmarks/flow_scaling.py [--tokens 64 128 256 512 1024] [--width 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fusescope.models.flow import MangoBlock, standard_normal_log_prob


def saved_bytes(fn) -> tuple[object, int]:
    """Run `fn` and return its result with the bytes of tensors autograd saved for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(storages.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(tokens: int, width: int, batch: int, reps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    block = MangoBlock(width, tokens, attn_dim=width, hidden=2 * width).to(device)
    x = torch.randn(batch, tokens, width, device=device)

    def step():
        z, logdet = block(x)
        return -(standard_normal_log_prob(z) + logdet).mean()

    (loss, mem) = saved_bytes(step)
    loss.backward()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, inv_times = [], []
    for _ in range(reps):
        block.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        step().backward()
        sync(device)
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            z, _ = block(x)
            sync(device)
            t0 = time.perf_counter()
            block.inverse(z)
            sync(device)
            inv_times.append(time.perf_counter() - t0)
    out = {
        "tokens": tokens,
        "fwd_bwd_s": statistics.median(times),
        "inverse_s": statistics.median(inv_times),
        "saved_mb": mem / 2**20,
        "params": sum(p.numel() for p in block.parameters()),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(n, args.width, args.batch, args.reps, device) for n in args.tokens]
    base = rows[0]
    print(
        f"one MANGO block, width D={args.width}, batch {args.batch}, device {device}, "
        f"{args.threads} thread(s); ratios vs N={base['tokens']}"
    )
    print("expected: time O(N^2 D + N D^2), saved activations O(N^2 + N D) per layer")
    cuda = "cuda_peak_mb" in base
    head = (
        f"{'N':>6} {'fwd+bwd ms':>11} {'x':>6} {'(N/N0)^2':>9} {'inverse ms':>11} {'x':>6} "
        f"{'saved MB':>9} {'x':>6} {'params':>9}" + (f" {'cuda peak MB':>13}" if cuda else "")
    )
    print(head)
    for r in rows:
        quad = (r["tokens"] / base["tokens"]) ** 2
        line = (
            f"{r['tokens']:>6} {1e3 * r['fwd_bwd_s']:>11.2f} "
            f"{r['fwd_bwd_s'] / base['fwd_bwd_s']:>6.1f} {quad:>9.0f} "
            f"{1e3 * r['inverse_s']:>11.2f} {r['inverse_s'] / base['inverse_s']:>6.1f} "
            f"{r['saved_mb']:>9.2f} {r['saved_mb'] / base['saved_mb']:>6.1f} "
            f"{r['params']:>9}"
        )
        if cuda:
            line += f" {r['cuda_peak_mb']:>13.1f}"
        print(line)


if __name__ == "__main__":
    main()
