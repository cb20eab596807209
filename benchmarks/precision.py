"""fp32 vs bf16 autocast for a SmolLM2-135M forward+backward and forward on the CPU, side by side.

On CPUs with AMX / AVX512-BF16 autocast is several times faster; on CPUs without bf16 units it can be
slower, which is why the quickstart stays fp32 and the CPU study configs opt in with
`trainer.precision: bf16-mixed`.

    python benchmarks/precision.py [--batch 8] [--tokens 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from sage.models import load_model


def timed(fn, bf16: bool, repeats: int) -> float:
    fn(bf16)  # warm-up (oneDNN picks kernels on the first call)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(bf16)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    model = load_model(a.model)
    x = torch.randint(0, 49000, (a.batch, a.tokens))

    def train_step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits[:, -32:].float()
        logits.logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(input_ids=x)

    print(f"{a.model}, batch {a.batch} x {a.tokens} tokens, torch threads={torch.get_num_threads()}")
    print(f"{'pass':<18}{'fp32 s':>9}{'bf16 s':>9}{'speed-up':>10}")
    for name, fn in (("forward+backward", train_step), ("forward", forward)):
        t32, t16 = timed(fn, False, a.repeats), timed(fn, True, a.repeats)
        print(f"{name:<18}{t32:>9.2f}{t16:>9.2f}{t32 / t16:>9.2f}x")


if __name__ == "__main__":
    main()
