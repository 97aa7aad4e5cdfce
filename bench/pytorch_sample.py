"""The PyTorch reference for `dlm bench sample`: the reference top-k-confidence sampler
(reference-semantics §2.1-2.2: shift, full logits every step, argmax, T forwards) on the same
HF-layout weights, loaded with HF transformers. Optional: needs `pip install torch transformers`.

    python3 bench/pytorch_sample.py MODEL_DIR [--length 256 --steps 64 --dtype fp32|bf16]
        [--dlm-json out.json] [--device cpu|cuda]

The canvas is [BOS] + `length` masks, as `dlm bench sample` uses. With `--dlm-json` (the output of
`dlm generate MODEL_DIR --prompt-ids BOS --length N --steps T --exact --json`) it also checks that
both produce the same argmax tokens. Loading the directory in transformers doubles as the check
that dlm's checkpoints are HF-loadable.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--length", type=int, default=256)
p.add_argument("--steps", type=int, default=64)
p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
p.add_argument("--dlm-json")
p.add_argument("--device", default="cpu")
args = p.parse_args()

dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
cfg = model.config
mask_id = getattr(cfg, "mask_token_id", None)
if mask_id is None:
    mask_id = cfg.vocab_size - 1
bos = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id != mask_id else 0

L = args.length + 1
x = torch.tensor([[bos] + [mask_id] * args.length], device=args.device)
src = torch.zeros(1, L, dtype=torch.bool, device=args.device)
src[:, 0] = True
# Bidirectional attention: a 4D boolean mask that allows every pair (the reference's all-zeros
# additive mask), passed through transformers untouched.
full = torch.ones(1, 1, L, L, dtype=torch.bool, device=args.device)


def synchronize():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def propose(xt):
    logits = model(input_ids=xt, attention_mask=full).logits.float()  # full logits, every row
    scores, x0 = torch.log_softmax(logits, -1).max(-1)
    # Shift: position i takes row i-1; position 0 keeps its input token.
    x0 = torch.cat([xt[:, :1], x0[:, :-1]], 1)
    scores = torch.cat([scores[:, :1], scores[:, :-1]], 1)
    return x0, scores


T = args.steps
with torch.no_grad():
    if args.device.startswith("cuda"):
        propose(x)  # CUDA's context and cuBLAS's handles are made on first use: not timed
        synchronize()
    t0 = time.time()
    xt = x.masked_fill(~src, mask_id)
    maskable = ~src
    n = int(maskable.sum())
    x0, scores = propose(xt)
    x0 = torch.where(maskable, x0, xt)
    for t in range(T - 1, 0, -1):
        cutoff = n * t // T
        # The cutoff_len lowest scores among originally maskable positions stay masked; committed
        # positions compete (quirk); src positions are excluded with score 1000.
        ranked = torch.where(~src, scores, torch.full_like(scores, 1000.0))
        keep = torch.zeros_like(src)
        if cutoff > 0:
            keep[0, ranked[0].argsort()[:cutoff]] = True
        commit = maskable & ~keep
        xt = torch.where(commit, x0, xt)
        maskable = maskable & ~commit
        x0_new, scores = propose(xt)
        x0 = torch.where(maskable, x0_new, xt)
    synchronize()
    secs = time.time() - t0
out = x0[0, 1:].tolist()
print(f"pytorch {args.dtype} reference sampler: canvas {L}, T = {T}: {secs * 1e3 / T:.1f} ms/step, "
      f"{args.length / secs:.1f} tokens/s")
if args.dlm_json:
    ours = json.load(open(args.dlm_json))["ids"]
    ours = ours[-args.length:]
    same = sum(a == b for a, b in zip(ours, out))
    print(f"argmax tokens identical to dlm: {same}/{args.length}"
          + ("" if same == args.length else f" (first difference at {next(i for i, (a, b) in enumerate(zip(ours, out)) if a != b)})"))
