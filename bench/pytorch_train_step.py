"""The PyTorch reference for `dlm bench train`: one DiffuGPT training step (shift, 1/t-weighted
masked CE, bidirectional attention, AdamW) on a GPT-2-small shape with an untied head, batch 1,
seq 512. Optional: needs `pip install torch transformers`. Run beside `dlm bench train` on an
otherwise idle machine and compare the printed seconds per step.

    python3 bench/pytorch_train_step.py [--dtype fp32|bf16] [--steps 3] [--batch 1] [--device cpu|cuda]
"""
import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
p.add_argument("--steps", type=int, default=3)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--device", default="cpu")
args = p.parse_args()
cuda = args.device.startswith("cuda")


def now():
    if cuda:
        torch.cuda.synchronize()
    return time.time()


torch.manual_seed(0)
cfg = GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024, tie_word_embeddings=False)
model = GPT2LMHeadModel(cfg).to(args.device)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
mask_id, L = 0, args.seq
x0 = torch.randint(1, cfg.vocab_size, (args.batch, L), device=args.device)
autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
zero_mask = torch.zeros(1, 1, L, L)  # bidirectional: the additive mask allows everything

times = []
for step in range(args.steps + 1):
    t0 = now()
    t = (1 - 1e-3) * torch.rand(args.batch, 1, device=args.device) + 1e-3
    masked = torch.rand(args.batch, L, device=args.device) < t
    xt = torch.where(masked, mask_id, x0)
    with autocast:
        logits = model(input_ids=xt, attention_mask=None).logits  # eager attention; see note
    loss_mask = (xt == mask_id)[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), x0[:, 1:].reshape(-1), reduction="none")
    loss = (ce * loss_mask.reshape(-1) / t.expand(-1, L - 1).reshape(-1)).sum() / loss_mask.sum().clamp(min=1)
    t1 = now()
    loss.backward()
    t2 = now()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    t3 = now()
    if step > 0:
        times.append((t1 - t0, t2 - t1, t3 - t2))
f, b, o = (sum(x) / len(times) for x in zip(*times))
print(f"pytorch {args.dtype} train step (batch {args.batch}, seq {L}, {args.device}): {f + b + o:.2f} s = forward {f:.2f} + backward {b:.2f} + optimizer {o:.2f}"
      + (f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""))
# Note: HF GPT-2 applies its causal mask internally; the timing is the same for a bidirectional
# mask (the reference patches the mask away), which is why none is passed here.
