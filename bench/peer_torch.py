"""The PyTorch side of the side-by-side benchmark: Garg et al.'s model and train step, rebuilt the
way their code builds it, timed on this CPU. Runs in the bench-only venv (`make bench-peer`
creates .venv-peer with torch (CPU) + transformers); never imported by ictl.

    .venv-peer/bin/python bench/peer_torch.py --size tiny --d 20 --points 41 --steps 10

The model (Garg et al. 2022, `TransformerModel`): read-in nn.Linear(d → D), transformers'
`GPT2Model` (n_positions = 2·points, dropout 0, use_cache False) fed `inputs_embeds`, read-out
nn.Linear(D → 1), predictions at the x tokens (even positions). The step: fresh prompts
x ~ N(0, I_d), w ~ N(0, I_d), y = x·w (batch B, sampled with torch on the CPU as their
`GaussianSampler` / `LinearRegression` do), squared error, backward, Adam. Prints one JSON line:
median ms/step over ``--steps`` timed steps after ``--warmup`` untimed ones, and the parameter
counts (all, and without GPT2's token-embedding table, which `inputs_embeds` never reads).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

SIZES = {"standard": (12, 8, 256), "small": (6, 4, 128), "tiny": (3, 2, 64)}  # layers, heads, width


class TransformerModel(nn.Module):
    def __init__(self, d: int, points: int, layers: int, heads: int, width: int):
        super().__init__()
        cfg = GPT2Config(n_positions=2 * points, n_embd=width, n_layer=layers, n_head=heads,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        self.read_in = nn.Linear(d, width)
        self.backbone = GPT2Model(cfg)
        self.read_out = nn.Linear(width, 1)

    def forward(self, xs, ys):  # xs [B, N, d], ys [B, N] → predictions at the x tokens [B, N]
        b, n, d = xs.shape
        ys_wide = torch.cat([ys.view(b, n, 1), torch.zeros(b, n, d - 1)], dim=2)
        zs = torch.stack((xs, ys_wide), dim=2).view(b, 2 * n, d)
        h = self.backbone(inputs_embeds=self.read_in(zs)).last_hidden_state
        return self.read_out(h)[:, ::2, 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny")
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--points", type=int, default=41)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    layers, heads, width = SIZES[a.size]
    model = TransformerModel(a.d, a.points, layers, heads, width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        xs = torch.randn(a.batch, a.points, a.d)
        w = torch.randn(a.batch, a.d, 1)
        ys = (xs @ w)[:, :, 0]
        opt.zero_grad()
        loss = (model(xs, ys) - ys).square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    n_all = sum(p.numel() for p in model.parameters())
    n_wte = model.backbone.wte.weight.numel()
    print(json.dumps({"impl": "pytorch", "size": a.size, "d": a.d, "points": a.points, "batch": a.batch,
                      "ms": 1e3 * statistics.median(times), "ms_all": [1e3 * t for t in times],
                      "params": n_all - n_wte, "params_with_unused_wte": n_all,
                      "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
