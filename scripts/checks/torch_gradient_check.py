# dlm's diffusion loss and gradients (`dlm score --request`, loss mode) against an independent
# PyTorch GPT-2 written here from the checkpoint's tensors: one random bidirectional batch,
# shift on, 1/t-weighted masked CE divided by the masked targets (reference-semantics §1.3-1.4).
# usage: python3 scripts/checks/torch_gradient_check.py GPT2_MODEL_DIR [DLM_BINARY] [B L]
# Needs torch and safetensors. Prints the two losses and every parameter's gradient norm.
import json, math, random, subprocess, sys, tempfile
import torch
from safetensors.torch import load_file

d = sys.argv[1]
dlm = sys.argv[2] if len(sys.argv) > 2 else "target/release/dlm"
B, L = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (4, 64)
cfg = json.load(open(d + "/config.json"))
W = {k: v.double().requires_grad_(True) for k, v in load_file(d + "/model.safetensors").items()}
pre = "transformer." if "transformer.wte.weight" in W else ""
g = lambda n: W[pre + n]
H, V, D = cfg["n_head"], g("wte.weight").shape[0], g("wte.weight").shape[1]
mask_id = cfg.get("mask_token_id", 1)
random.seed(1)
x0 = [[random.randrange(2, V) for _ in range(L)] for _ in range(B)]
t = [random.random() * 0.9 + 0.05 for _ in range(B)]
draws = [[random.random() for _ in range(L)] for _ in range(B)]
req = {"x0": x0, "t": t, "mask_draws": draws, "src_mask": [[0] * L] * B, "mask_id": mask_id,
       "shift": True, "attention": "bidirectional", "loss": "masked-targets"}
xt = torch.tensor([[mask_id if draws[b][i] < t[b] else x0[b][i] for i in range(L)] for b in range(B)])
ln = lambda x, n: torch.nn.functional.layer_norm(x, (D,), g(n + ".weight"), g(n + ".bias"), 1e-5)
gelu = lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
h = g("wte.weight")[xt] + g("wpe.weight")[:L]
heads = lambda z: z.view(B, L, H, D // H).transpose(1, 2)
for i in range(cfg["n_layer"]):
    p = f"h.{i}."
    q, k, v = (ln(h, p + "ln_1") @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")).split(D, -1)
    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D // H), -1)  # no mask
    y = (att @ heads(v)).transpose(1, 2).reshape(B, L, D)
    h = h + y @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
    h = h + gelu(ln(h, p + "ln_2") @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias")) \
        @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
head = W.get("lm_head.weight", g("wte.weight"))
logp = torch.log_softmax((ln(h, "ln_f") @ head.T)[:, :-1], -1)  # the shift: row i scores i+1
masked = xt[:, 1:] == mask_id
ce = -logp.gather(-1, torch.tensor(x0)[:, 1:].unsqueeze(-1)).squeeze(-1)
loss = (ce / torch.tensor(t, dtype=torch.float64)[:, None])[masked].sum() / masked.sum()
loss.backward()
with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
    json.dump(req, f)
    f.flush()
    out = json.loads(subprocess.check_output([dlm, "score", d, "--request", f.name, "--json"]))
print(f"loss: torch {loss.item():.7f}  dlm {out['loss_weighted']:.7f}")
worst = 0.0
for name, w in sorted(W.items()):
    ours = out["grad_norms"].get(name, out["grad_norms"].get(name.removeprefix("transformer.")))
    theirs = w.grad.norm().item() if w.grad is not None else 0.0
    worst = max(worst, abs(ours - theirs) / max(theirs, 1e-12))
    print(f"{name:42} torch {theirs:.6f}  dlm {ours:.6f}")
print(f"largest relative difference of a gradient norm: {worst:.1e}")
