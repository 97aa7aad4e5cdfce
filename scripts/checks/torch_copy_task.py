# How fast a masked-diffusion objective learns to read a neighbour, in PyTorch alone (no dlm): a
# 2-layer GPT-2-shaped bidirectional model (d 128, 4 heads) on lines of 40 words where every word
# comes twice ("king king sweet sweet ..."), so a masked token's twin beside it gives it away.
# Trained with dlm's settings (AdamW lr 2e-3, beta2 0.99, wd 0.1, 20 warmup steps, clipping 1.0,
# 32 x 64 tokens a step), the 1/t-weighted loss or the unweighted one. Prints the masked-token
# cross-entropy every 100 steps at t = 0.15: about 4.2 nats is knowing the word list and nothing
# more; a model that copies the twin it sees gets below 1.
# usage: python3 scripts/checks/torch_copy_task.py TOKENIZER_JSON [STEPS] [--shift] [--unweighted]
import math, random, sys
import torch
from tokenizers import Tokenizer

steps = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 300
shift, weighted = "--shift" in sys.argv, "--unweighted" not in sys.argv
torch.manual_seed(0)
random.seed(0)
tok = Tokenizer.from_file(sys.argv[1])
words = ("king lord sweet night day love death heart eyes hand good fair noble brother sister father "
         "mother queen crown sword blood fire water earth heaven hell grace honour power peace war time "
         "life soul friend foe man woman child youth").split()
line = lambda: " ".join(w for w in random.choices(words, k=4) for _ in range(2))
ids = tok.encode("\n".join(line() for _ in range(60000))).ids
val = tok.encode("\n".join(line() for _ in range(2000))).ids
V, D, H, L, B, MASK = tok.get_vocab_size(), 128, 4, 64, 32, 1


class Block(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.l1, s.l2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        s.qkv, s.o = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
        s.fc, s.proj = torch.nn.Linear(D, 4 * D), torch.nn.Linear(4 * D, D)

    def forward(s, x):
        b, l, _ = x.shape
        q, k, v = (z.view(b, l, H, D // H).transpose(1, 2) for z in s.qkv(s.l1(x)).split(D, -1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # bidirectional
        x = x + s.o(y.transpose(1, 2).reshape(b, l, D))
        return x + s.proj(torch.nn.functional.gelu(s.fc(s.l2(x)), approximate="tanh"))


class Model(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe = torch.nn.Embedding(V, D), torch.nn.Embedding(L, D)
        s.blocks, s.lnf = torch.nn.ModuleList(Block() for _ in range(2)), torch.nn.LayerNorm(D)
        for p in s.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def forward(s, x):
        h = s.wte(x) + s.wpe.weight[: x.shape[1]]
        for blk in s.blocks:
            h = blk(h)
        return s.lnf(h) @ s.wte.weight.T


def batch(src):
    return torch.tensor([src[i:i + L] for i in (random.randrange(len(src) - L) for _ in range(B))])


def losses(m, x0, t):
    xt = torch.where(torch.rand(x0.shape) < t[:, None], torch.full_like(x0, MASK), x0)
    logits = m(xt)
    if shift:  # row i scores token i+1
        logits, x0, xt = logits[:, :-1], x0[:, 1:], xt[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x0.reshape(-1), reduction="none")
    ce, masked = ce.view(x0.shape), xt == MASK
    return (ce / t[:, None])[masked].sum() / masked.sum().clamp(min=1), ce[masked].mean()


m = Model()
opt = torch.optim.AdamW(m.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1)
for s in range(steps):
    for grp in opt.param_groups:
        grp["lr"] = 2e-3 * min(1.0, (s + 1) / 20)
    weighted_loss, plain = losses(m, batch(ids), torch.rand(B) * 0.999 + 0.001)
    opt.zero_grad()
    (weighted_loss if weighted else plain).backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    if (s + 1) % 100 == 0:
        with torch.no_grad():
            state = random.getstate()
            random.seed(5)
            torch.manual_seed(5)
            _, ce = losses(m, batch(val), torch.full((B,), 0.15))
            random.setstate(state)
        print(f"step {s + 1}: masked-token CE at t = 0.15 on held-out lines {ce.item():.3f} nats", flush=True)
