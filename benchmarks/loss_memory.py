"""Peak memory and time of one micro-batch's loss forward+backward: full [N, V] logits vs chunked fp32 head.

before: today's path (`masked_logits`-style head on the N response positions, teacher logits under
        no_grad, `token_divergence` on the full [N, V] logits, weighted sum).
after:  `sage.distill.fused.chunked_token_loss` on the hidden states (chunks + recomputation).

Each case runs in a fresh subprocess (CPU): after a small warm-up, the kernel's RSS high-water mark is
reset (/proc/self/clear_refs) and the case reports VmHWM - VmRSS, i.e. the extra resident memory the
loss forward+backward needed on top of its inputs and weights (the head weight's gradient included).

    python benchmarks/loss_memory.py [--tokens 1024 4096 8192] [--vocab 49152] [--hidden 576] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

import torch
from torch import nn

from sage.distill.divergence import token_divergence
from sage.distill.fused import chunked_token_loss


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def run_case(mode: str, n: int, vocab: int, hidden: int, chunk: int, kind: str, bf16: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    s_head, t_head = nn.Linear(hidden, vocab, bias=False), nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    s_hidden = torch.randn(n, hidden, requires_grad=True)
    t_hidden, targets, weights = torch.randn(n, hidden), torch.randint(0, vocab, (n,)), torch.rand(n)

    def step(m: int) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if mode == "before":
                s_logits = s_head(s_hidden[:m])[None]
                with torch.no_grad():
                    t_logits = t_head(t_hidden[:m])[None]
                tok = token_divergence(s_logits, t_logits, targets[None, :m], kind)
                loss = (weights[None, :m] * tok).sum()
            else:
                loss = chunked_token_loss(s_hidden[:m], s_head, t_hidden[:m], t_head, targets[:m], weights[:m],
                                          kind, chunk_tokens=chunk)
        loss.backward()
        s_head.weight.grad, s_hidden.grad = None, None
        return float(loss)

    step(min(n, 64))  # warm-up: kernels, thread pools
    peak, seconds = 0.0, float("inf")
    for _ in range(repeats):  # peak: the largest; time: the fastest (the CPU may be shared)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark to the current RSS
        base = _status_kb("VmRSS")
        t = time.perf_counter()
        loss = step(n)
        seconds = min(seconds, time.perf_counter() - t)
        peak = max(peak, (_status_kb("VmHWM") - base) / 1024)
    return {"peak_mb": peak, "seconds": seconds, "loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--vocab", type=int, default=49152)  # SmolLM2
    p.add_argument("--hidden", type=int, default=576)  # SmolLM2-135M
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--kind", default="reverse_kl")
    p.add_argument("--bf16", action="store_true", help="run under CPU bf16 autocast (default fp32)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (fastest is reported)")
    p.add_argument("--case", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case[0], int(a.case[1]), a.vocab, a.hidden, a.chunk, a.kind, a.bf16,
                                  a.repeats)))
        return

    res: dict[tuple[str, int], dict] = {}
    for n in a.tokens:
        for mode in ("before", "after"):
            cmd = [sys.executable, __file__, "--case", mode, str(n), "--vocab", str(a.vocab), "--hidden",
                   str(a.hidden), "--chunk", str(a.chunk), "--kind", a.kind, "--repeats", str(a.repeats)]
            cmd += ["--bf16"] if a.bf16 else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res[mode, n] = json.loads(out.strip().splitlines()[-1])

    print(f"{a.kind}, V={a.vocab}, H={a.hidden}, chunk={a.chunk}, {'bf16 autocast' if a.bf16 else 'fp32'}, "
          f"torch threads={torch.get_num_threads()}; peak = extra RSS of one forward+backward")
    print(f"{'tokens':>7} {'before MB':>10} {'after MB':>9} {'ratio':>6} {'before s':>9} {'after s':>8} "
          f"{'time x':>7} {'loss rel diff':>13}")
    for n in a.tokens:
        b, f = res["before", n], res["after", n]
        diff = abs(b["loss"] - f["loss"]) / max(abs(b["loss"]), 1e-12)
        print(f"{n:>7} {b['peak_mb']:>10.0f} {f['peak_mb']:>9.0f} {b['peak_mb'] / f['peak_mb']:>6.1f} "
              f"{b['seconds']:>9.2f} {f['seconds']:>8.2f} {f['seconds'] / b['seconds']:>7.2f} {diff:>13.1e}")

    # Estimate by formula for paper scale, fitted on the rows above: before grows by k_b bytes per
    # token x vocab column; after is k_a bytes per chunk x vocab column plus the head's weight gradient.
    lo, hi = min(a.tokens), max(a.tokens)
    mb = 2**20
    w_grad = a.vocab * a.hidden * 4
    k_b = (res["before", hi]["peak_mb"] - res["before", lo]["peak_mb"]) * mb / ((hi - lo) * a.vocab) if hi > lo \
        else (res["before", hi]["peak_mb"] * mb - w_grad) / (hi * a.vocab)
    k_a = max((res["after", n]["peak_mb"] * mb - w_grad - n * a.hidden * 8) / (min(a.chunk, n) * a.vocab)
              for n in a.tokens)
    big_v, big_h, big_n = 152064, 1536, 8192
    est_b = (k_b * big_n * big_v + big_v * big_h * 4) / mb
    print(f"ESTIMATE (formula, not measured): V={big_v}, H={big_h}, N={big_n}: before ~{est_b:,.0f} MB "
          f"({k_b:.1f} B per token x vocab column, + head grad)")
    for c in sorted({a.chunk, 256}, reverse=True):
        est_a = (k_a * c * big_v + big_v * big_h * 4 + big_n * big_h * 8) / mb
        print(f"ESTIMATE (formula, not measured): after, chunk {c}: ~{est_a:,.0f} MB ({k_a:.1f} B per chunk "
              f"token x vocab column, + head grad), ratio ~{est_b / est_a:.0f}x")
    print(json.dumps({
        "vocab": a.vocab, "hidden": a.hidden, "tokens": a.tokens,
        "peak_mb_before": [round(res["before", n]["peak_mb"], 1) for n in a.tokens],
        "peak_mb_after": [round(res["after", n]["peak_mb"], 1) for n in a.tokens],
        "seconds_before": [round(res["before", n]["seconds"], 3) for n in a.tokens],
        "seconds_after": [round(res["after", n]["seconds"], 3) for n in a.tokens],
        "chunk_tokens": a.chunk,
    }))


if __name__ == "__main__":
    main()
