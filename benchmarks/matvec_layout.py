"""Why kvlab stores weights [in, out]: time batch-1 matrix-vector products over every
DistilGPT-2-shaped weight matrix in both memory layouts (random weights, no model needed).

Run: python benchmarks/matvec_layout.py
Seen on the 2-core dev machine: blocks [in,out] ~8 ms vs [out,in] ~10 ms; LM head ~5.8 ms
vs ~10 ms.
"""

import statistics
import time

import torch
import torch.nn.functional as F

D_MODEL, N_LAYERS, VOCAB = 768, 6, 50257


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    d = D_MODEL
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * N_LAYERS
    in_out = [torch.randn(i, o) for i, o in shapes]  # x @ w
    out_in = [w.t().contiguous() for w in in_out]  # F.linear(x, w), nn.Linear's layout
    head_in_out = torch.randn(d, VOCAB)
    head_out_in = head_in_out.t().contiguous()
    x = {n: torch.randn(1, n) for n in (d, 4 * d)}

    def blocks_in_out():
        for w in in_out:
            x[w.shape[0]] @ w

    def blocks_out_in():
        for w in out_in:
            F.linear(x[w.shape[1]], w)

    print(f"threads: {torch.get_num_threads()}")
    for _ in range(2):
        print(f"blocks [in,out] {median_ms(blocks_in_out):.2f} ms, "
              f"[out,in] {median_ms(blocks_out_in):.2f} ms | "
              f"LM head [in,out] {median_ms(lambda: x[d] @ head_in_out):.2f} ms, "
              f"[out,in] {median_ms(lambda: F.linear(x[d], head_out_in)):.2f} ms")


if __name__ == "__main__":
    main()
