"""The checks of `scripts/gpu-check.sh run` (issue 18): the CUDA path, or the CPU one, through the
dlm CLI alone, against the golden fixtures in tests/fixtures and against the CPU. Python 3 standard
library only (the GPU machine's Python has torch, CI's may have nothing else).

    python3 scripts/gpu_check.py --dlm gpu-bundle/cuda/dlm --device cuda --out gpu-check.md

Prints one table (check, device, dtype, result, numbers; Δ is an absolute difference), writes it
to --out with every command's output in --out's .log beside it, and exits 1 on any FAIL (a SKIP
says why it could not run).
"""
import argparse
import array
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = ["gpt2-tiny", "llama-tiny", "llama-tiny-tied"]
# fixtures/README §7: each family's own PyTorch code, its own golden layout, its mask id in config.json.
FAMILIES = ["llada-tiny", "dream-tiny"]
# Each family's sampler cases (§7.5), with the CLI arguments beyond the prompt, length and steps
# that reproduce them (tests/parity_family_samplers.rs); a model gets its family's sampler unasked.
FAMILY_SAMPLES = {
    "llada-tiny": [("base", ["--block-length", "8"]), ("cfg", ["--block-length", "8", "--cfg-scale", "1"]),
                   ("uneven", ["--block-length", "12"])],
    "dream-tiny": [(case, ["--alg", case.replace("_", "-")]) for case in ["entropy", "maskgit_plus", "topk_margin"]],
}
BUILTIN = os.path.join(ROOT, "weights", "dlm-shakespeare-12m")
DATA = os.path.join(FIXTURES, "data")
MASK = 7
# fixtures/README §4: f32 logits, losses, gradients (atol + rtol·max|want|), one AdamW step end to
# end, SmolLM2's last logits.
F32_ATOL = 1e-5
GRAD_RTOL = 1e-4
STEP_ATOL = 2e-4
SMOLLM2_ATOL = 5e-4
# fixtures/README §7.7, the families' logits (reaching 20), CE, losses and gradients: |Δ| ≤ 2e-5 ·
# max|golden entry|; their sampler scores follow the logit error: atol 2e-4.
FAMILY_RTOL = 2e-5
FAMILY_SCORE_ATOL = 2e-4
# bf16 keeps 8 significant bits: one rounding is up to 2^-9 relative, and a logit is a sum of
# products that each went through a few such roundings (weights converted on load, activations
# after every op). The bound is 2^-4 of the largest golden logit of the sequence (32 roundings at
# that scale): the CPU's bf16 path measured at most 0.27 of it on the DiffuLLaMA fixtures and 0.70
# on LLaDA's and Dream's (random weights of std 0.25 and a head of std 1: larger activations; the
# table prints Δ/tol), and a wrong mask or a dropped term moves logits by a good part of their size.
BF16_LOGIT_REL = 2.0 ** -4
# tests/parity_training.rs, bf16 over f32 master weights: loss within 0.5%, every gradient within
# 10% relative L2.
BF16_LOSS_RTOL = 5e-3
BF16_GRAD_RTOL = 0.1
# Two runs of 3 AdamW steps (lr 1e-3) that should agree up to float rounding (tests/dist_mpi.rs):
# every parameter and moment within RUNS_ATOL, and each step's loss relative to its size. One
# exception is allowed for: where a gradient is zero in exact arithmetic (GPT-2's key biases:
# softmax is shift invariant), AdamW's step of lr·g/(|g|+eps) follows the rounding noise of g, so
# two devices can move such an entry by up to 2·lr per step apart. Such entries may pass the atol
# when they are at most RUNS_STRAY_SHARE of all and within 3 steps · 2·lr.
RUNS_ATOL = 1e-4
RUNS_LOSS_RTOL = 1e-4
RUNS_STRAY_SHARE = 1e-3
RUNS_STRAY_MAX = 3 * 2 * 1e-3


def read_safetensors(path):
    """{name: (shape, flat list)} for the F32 and I64 tensors of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "I64": "q"}.get(meta["dtype"])
        if code is None:
            raise SystemExit(f"{path}: {name} is {meta['dtype']}; the checker reads F32 and I64")
        a = array.array(code)
        start, end = meta["data_offsets"]
        a.frombytes(data[start:end])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = (meta["shape"], a.tolist())
    return out


def rows(flat, width):
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def max_abs_diff(a, b):
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def flat(x):
    return [v for r in x for v in r] if x and isinstance(x[0], list) else list(x)


def l2(v):
    return math.sqrt(sum(x * x for x in v))


def max_abs(v):
    return max((abs(x) for x in v), default=0.0)


def grad_quotient(grads, g, dtype, f32_tol):
    """The worst gradient's error over its bound, for every `grad.*` of the golden `g` (inf when the
    reported names differ): f32 max |Δ| ≤ f32_tol(max|golden|), bf16 relative L2 ≤ BF16_GRAD_RTOL.
    A gradient that is all zero also fails: it was not computed."""
    names = sorted(k[5:] for k in g if k.startswith("grad."))
    if sorted(grads) != names or not all(l2(grads[n]["data"]) > 0 for n in names):
        return math.inf, len(names)
    if dtype == "f32":
        q = max(max_abs_diff(grads[n]["data"], g["grad." + n][1]) / f32_tol(max_abs(g["grad." + n][1]))
                for n in names)
    else:
        q = max(l2([a - w for a, w in zip(grads[n]["data"], g["grad." + n][1])]) / l2(g["grad." + n][1])
                for n in names) / BF16_GRAD_RTOL
    return q, len(names)


def error_line(err, rc):
    """The line of a command's stderr that says what went wrong."""
    lines = [x for x in err.strip().splitlines() if x.strip()]
    for x in lines:
        if "error:" in x or "panicked" in x:
            return x
    return lines[-1] if lines else f"exit {rc}"


class Checker:
    def __init__(self, args):
        self.dlm = os.path.abspath(args.dlm)
        self.device = args.device
        self.torch_python = args.torch_python
        self.rows = []
        self.log = open(args.out[:-3] + ".log" if args.out.endswith(".md") else args.out + ".log", "w")
        self.tmp = tempfile.mkdtemp(prefix="gpu-check-")
        self.gpu = args.device.startswith("cuda")
        self.gpus = self.count_gpus()

    # ---- running things -------------------------------------------------------------------------

    def run(self, argv, env=None, timeout=240, check=True):
        """Runs a command, logs it and its output; (returncode, stdout, stderr, seconds)."""
        t = time.time()
        self.log.write(f"\n$ {' '.join(argv)}\n")
        self.log.flush()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               env=None if env is None else {**os.environ, **env})
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = 124, e.stdout or "", (e.stderr or "") + f"\ntimed out after {timeout} s"
            out = out if isinstance(out, str) else out.decode(errors="replace")
            err = err if isinstance(err, str) else err.decode(errors="replace")
        secs = time.time() - t
        self.log.write(out[-20000:] + err[-20000:] + f"[rc {rc}, {secs:.1f} s]\n")
        self.log.flush()
        if check and rc != 0:
            raise RuntimeError(f"`{' '.join(os.path.basename(a) if a == self.dlm else a for a in argv[:3])} …` "
                               f"exited {rc}: {error_line(err, rc)}")
        return rc, out, err, secs

    def dlm_json(self, argv, device=None, dtype="f32"):
        """Runs dlm with `--device` and `--dtype`, parsing one JSON object per stdout line."""
        _, out, _, _ = self.run([self.dlm, *argv, "--device", device or self.device, "--dtype", dtype])
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def write(self, name, value):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(value if isinstance(value, str) else json.dumps(value))
        return path

    def count_gpus(self):
        if not shutil.which("nvidia-smi"):
            return 0
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return sum(line.startswith("GPU ") for line in p.stdout.splitlines())

    def add(self, check, dtype, ok, numbers, device=None):
        result = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        self.rows.append((check, device or self.device, dtype, result, numbers))
        print(f"{result} {check} [{device or self.device} {dtype}] {numbers}", flush=True)

    def guarded(self, check, dtype, body):
        """Runs one check; an exception is its FAIL row, with the message."""
        try:
            body()
        except Exception as e:  # noqa: BLE001 — every failure becomes a row of the table
            self.add(check, dtype, False, f"error: {e}")

    # ---- 1. forward parity --------------------------------------------------------------------

    def forward(self, dtype):
        for name in TINY:
            self.guarded(f"1 forward {name}", dtype, lambda name=name: self.forward_one(name, dtype))
        for name in FAMILIES:
            self.guarded(f"1 forward {name}", dtype, lambda name=name: self.forward_family(name, dtype))
        if dtype == "f32":  # its golden is an f32 run
            self.guarded("1 forward smollm2-135m", dtype, self.forward_smollm2)

    def forward_one(self, name, dtype):
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        (b, l), ids = g["input_ids"]
        v = g["logits_causal"][0][2]
        anneal = rows(g["anneal_matrix"][1], l)
        worst, bound_ok, parts = 0.0, True, []
        for key, attention in [("causal", "causal"), ("bidirectional", "bidirectional"),
                               ("annealed", {"anneal_matrix": anneal})]:
            want_all = g[f"logits_{key}"][1]
            mask_worst = 0.0
            for r in range(b):
                req = self.write("score.json", {"ids": ids[r * l:(r + 1) * l], "attention": attention})
                out = self.dlm_json(["score", os.path.join(FIXTURES, name), "--request", req, "--json", "--full"],
                                    dtype=dtype)[0]
                want = want_all[r * l * v:(r + 1) * l * v]
                d = max_abs_diff(flat(out["logits"]), want)
                tol = F32_ATOL if dtype == "f32" else BF16_LOGIT_REL * max(abs(x) for x in want)
                bound_ok &= d <= tol
                mask_worst = max(mask_worst, d / tol)
                worst = max(worst, d)
            parts.append(f"{key} {mask_worst:.2f}")
        tol = f"atol {F32_ATOL:.0e}" if dtype == "f32" else "2^-4·max logit"
        self.add(f"1 forward {name}", dtype, bound_ok,
                 f"3 masks × {b} rows, max Δ {worst:.2e} ({tol}); Δ/tol: {', '.join(parts)}")

    def forward_family(self, name, dtype):
        """A family's `logits` of `input_ids` (§7.2: bidirectional; LLaDA ignores the mask), one row
        per request. f32 within 2e-5 of the entry's largest logit (§7.7), bf16 as above."""
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        (b, l), ids = g["input_ids"]
        (_, _, v), want_all = g["logits"]
        worst, worst_q = 0.0, 0.0
        for r in range(b):
            req = self.write("score.json", {"ids": ids[r * l:(r + 1) * l], "attention": "bidirectional"})
            out = self.dlm_json(["score", os.path.join(FIXTURES, name), "--request", req, "--json", "--full"],
                                dtype=dtype)[0]
            want = want_all[r * l * v:(r + 1) * l * v]
            d = max_abs_diff(flat(out["logits"]), want)
            tol = FAMILY_RTOL * max_abs(want_all) if dtype == "f32" else BF16_LOGIT_REL * max_abs(want)
            worst, worst_q = max(worst, d), max(worst_q, d / tol)
        tol = "2e-5·max|logits|" if dtype == "f32" else "2^-4·max logit"
        self.add(f"1 forward {name}", dtype, worst_q <= 1.0,
                 f"bidirectional, {b} rows, max Δ {worst:.2e} ({tol}); Δ/tol {worst_q:.2f}")

    def forward_smollm2(self, dtype="f32"):
        assets = os.environ.get("DLM_ASSETS", os.path.expanduser("~/.cache/dlm-assets"))
        gguf = os.path.join(assets, "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if not os.path.exists(gguf):
            self.add("1 forward smollm2-135m", dtype, None,
                     f"{gguf} absent (98 MB: over the bundle's budget; scripts/fetch-assets.sh smollm2)")
            return
        model = os.path.join(self.tmp, "smollm2")
        if not os.path.exists(model):
            self.run([self.dlm, "convert", "--gguf", gguf, "--out", model])
        golden = json.load(open(os.path.join(FIXTURES, "smollm2-135m", "golden.json")))
        g = read_safetensors(os.path.join(FIXTURES, "smollm2-135m", "golden.safetensors"))
        (n, vocab), last = g["last_logits"]
        worst, same_top = 0.0, 0
        for k, p in enumerate(golden["prompts"]):
            ids = ",".join(map(str, p["prompt_ids"]))
            out = self.dlm_json(["score", model, "--ids", ids, "--attention", "causal", "--json", "--full"],
                                dtype=dtype)[0]
            got = out["logits"][-1]
            worst = max(worst, max_abs_diff(got, last[k * vocab:(k + 1) * vocab]))
            top = sorted(range(vocab), key=lambda i: -got[i])[:10]
            same_top += set(top) == set(p["top10_ids"])
        self.add("1 forward smollm2-135m", dtype, worst <= SMOLLM2_ATOL and same_top == n,
                 f"{n} prompts, last logits max Δ {worst:.2e} (atol {SMOLLM2_ATOL:.0e}), top-10 sets equal {same_top}/{n}")

    # ---- 2. training parity --------------------------------------------------------------------

    def training(self, dtype):
        for name in TINY:
            self.guarded(f"2 loss+grads+AdamW {name}", dtype, lambda name=name: self.training_one(name, dtype))
        for name in FAMILIES:
            self.guarded(f"2 loss+grads {name}", dtype, lambda name=name: self.family_training_one(name, dtype))

    def training_one(self, name, dtype):
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        gj = json.load(open(os.path.join(FIXTURES, name, "golden.json")))["scalars"]
        (b, l), x0 = g["input_ids"]
        req = {"x0": rows(x0, l), "t": g["t"][1], "mask_draws": rows(g["mask_draws"][1], l),
               "src_mask": rows(g["src_mask"][1], l), "mask_id": MASK}
        fixture = os.path.join(FIXTURES, name)
        out = self.dlm_json(["score", fixture, "--request", self.write("loss.json", req), "--full"], dtype=dtype)[0]
        noshift = self.dlm_json(["score", fixture, "--request", self.write("loss.json", {**req, "shift": False})],
                                dtype=dtype)[0]
        ok = flat(out["x_t"]) == g["x_t"][1] and out["n_masked_targets"] == gj["n_masked_targets_shift"]
        ok &= noshift["n_masked_targets"] == gj["n_masked_targets_noshift"]
        losses = [(out["loss_weighted"], gj["loss_weighted"]), (out["loss_unweighted"], gj["loss_unweighted"]),
                  (noshift["loss_weighted"], gj["loss_weighted_noshift"]),
                  (noshift["loss_unweighted"], gj["loss_unweighted_noshift"])]
        loss_d = max(abs(a - w) for a, w in losses)
        grads = out["grads"]
        if dtype == "f32":
            ok &= loss_d <= F32_ATOL
        else:
            ok &= all(abs(a - w) <= BF16_LOSS_RTOL * abs(w) for a, w in losses)
        grad_q, n_params = grad_quotient(grads, g, dtype, lambda m: F32_ATOL + GRAD_RTOL * m)
        ok &= grad_q <= 1.0
        norm_d = abs(out["grad_norm"] - gj["grad_norm_before_clip"]) / gj["grad_norm_before_clip"]
        numbers = (f"losses max Δ {loss_d:.1e}, grad norm rel Δ {norm_d:.1e}, worst grad Δ/tol {grad_q:.2f} "
                   f"({'atol 1e-5 + 1e-4·max' if dtype == 'f32' else 'rel L2 0.1'}, {n_params} params)")
        if dtype == "f32":
            ok &= norm_d <= 1e-5
            step_d = self.adamw_step(fixture, g, grads, out["grad_norm"])
            ok &= step_d <= STEP_ATOL
            numbers += f"; AdamW step 1 from these grads max Δ {step_d:.1e} (atol {STEP_ATOL:.0e})"
        self.add(f"2 loss+grads+AdamW {name}", dtype, ok, numbers)

    def family_training_one(self, name, dtype):
        """A family's loss under its own convention (§7.3: LLaDA unshifted ÷ B·L, its SFT loss and
        the paper's normaliser as a negative control; Dream shifted ÷ B), the per-position CE, and
        every gradient (§7.4; Dream's pad row exactly zero), the fixture's draws fed in."""
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        gj = json.load(open(os.path.join(FIXTURES, name, "golden.json")))["scalars"]
        fixture = os.path.join(FIXTURES, name)
        llada = name == "llada-tiny"
        (b, l), x0 = g["loss_x0"]
        # The request's `t` is the masking probability: the families' p_mask.
        req = {"x0": rows(x0, l), "t": g["p_mask"][1], "mask_draws": rows(g["mask_draws"][1], l)}

        def score(extra):
            path = self.write("loss.json", {**req, **extra})
            return self.dlm_json(["score", fixture, "--request", path, "--full"], dtype=dtype)[0]
        out = score({})
        ok = out["loss_convention"] == ("llada" if llada else "dream") and out["shift"] == (not llada)
        ok &= flat(out["x_t"]) == g["noisy_input_ids"][1] and out["n_masked_targets"] == gj["n_masked"]
        # (name, got, golden) losses and per-position CE rows.
        losses = [("loss", out["loss_weighted"], gj["loss"])]
        ces = [(flat(out["ce"]), g["ce" if llada else "ce_shifted"][1])]
        if llada:
            src = [[int(i < p) for i in range(l)] for p in g["sft_prompt_lengths"][1]]
            sft = score({"src_mask": src})
            ok &= flat(sft["x_t"]) == g["sft_noisy_input_ids"][1]
            losses.append(("sft_loss", sft["loss_weighted"], gj["sft_loss"]))
            ces.append((flat(sft["ce"]), g["sft_ce"][1]))
            control = score({"loss": "masked-targets", "shift": False})
            losses.append(("÷ n masked", control["loss_weighted"], gj["loss_if_normalised_by_n_masked"]))
        else:
            # nn.Embedding(padding_idx): the pad row gets no gradient, though the pad is an input.
            pad = json.load(open(os.path.join(fixture, "config.json")))["pad_token_id"]
            embed = out["grads"]["model.embed_tokens.weight"]
            hidden = embed["shape"][1]
            ok &= pad in x0 and all(x == 0 for x in embed["data"][pad * hidden:(pad + 1) * hidden])
        if dtype == "f32":
            loss_q = max(abs(a - w) / (FAMILY_RTOL * abs(w)) for _, a, w in losses)
            ce_q = max(max_abs_diff(a, w) / (FAMILY_RTOL * max_abs(w)) for a, w in ces)
        else:  # bf16: the losses within 0.5%; CE, per position, is not bounded in bf16
            loss_q = max(abs(a - w) / (BF16_LOSS_RTOL * abs(w)) for _, a, w in losses)
            ce_q = 0.0
        grad_q, n_params = grad_quotient(out["grads"], g, dtype, lambda m: FAMILY_RTOL * m)
        ok &= max(loss_q, ce_q, grad_q) <= 1.0
        rule = "2e-5·max|golden|" if dtype == "f32" else "losses 0.5%, grads rel L2 0.1"
        numbers = (f"{', '.join(f'{k} {a:.4f}' for k, a, _ in losses)} ({rule}); Δ/tol: losses {loss_q:.2f}, "
                   + (f"CE {ce_q:.2f}, " if dtype == "f32" else "")
                   + f"worst grad {grad_q:.2f} ({n_params} params)" + ("" if llada else ", pad row grad 0"))
        self.add(f"2 loss+grads {name}", dtype, ok, numbers)

    @staticmethod
    def adamw_step(fixture, g, grads, norm):
        """torch.optim.AdamW's first step (fixtures/README §3d: clip to 1, lr 1e-3, wd 0.01 on every
        parameter) on the device's gradients, against `param_after_step.*`: the gradients checked
        end to end. The device's own AdamW is checked by the adapt check, against the CPU's."""
        lr, wd, eps = 1e-3, 0.01, 1e-8
        coef = min(1.0, 1.0 / (norm + 1e-6))
        params = read_safetensors(os.path.join(fixture, "model.safetensors"))
        worst = 0.0
        for name, gr in grads.items():
            p0 = params[name][1]
            # m/(1-b1) = g and sqrt(v/(1-b2)) = |g| at step 1.
            p1 = [p * (1 - lr * wd) - lr * (x * coef) / (abs(x * coef) + eps) for p, x in zip(p0, gr["data"])]
            worst = max(worst, max_abs_diff(p1, g["param_after_step." + name][1]))
        return worst

    # ---- 2b. adapt on the device against the CPU, 5. data-parallel -------------------------------

    def tiny_base(self):
        """A byte-level tokenizer and a tiny GPT-2 AR model pretrained 2 steps on the CPU."""
        tok = os.path.join(self.tmp, "tok.json")
        base = os.path.join(self.tmp, "base")
        if not os.path.exists(base):
            self.run([self.dlm, "tokenizer", "train", "--vocab-size", "400", "--data", DATA, "--out", tok])
            self.run([self.dlm, *self.pretrain_args(tok, "ar", base, "4", "2"), "--device", "cpu"])
        latest = open(os.path.join(base, "checkpoints", "latest")).read().strip()
        return tok, os.path.join(base, "checkpoints", latest)

    @staticmethod
    def pretrain_args(tok, objective, out, micro_batch, steps):
        return ["pretrain", "--arch", "gpt2", "--config", "tiny", "--tokenizer", tok, "--objective", objective,
                "--data", DATA, "--seq-len", "32", "--no-progress", "--out", out, "--micro-batch", micro_batch,
                "--max-steps", steps, "--save-every", steps, "--lr", "1e-3", "--schedule", "constant",
                "--shuffle-buffer", "16"]

    def compare_runs(self, a, b, step):
        """Two runs' checkpoints at `step` (every parameter and AdamW moment) and logged training
        losses: (ok, numbers)."""
        worst, stray, total = 0.0, 0, 0
        for file in ["model.safetensors", "optimizer.safetensors"]:
            ta = read_safetensors(os.path.join(a, "checkpoints", f"step-{step:08d}", file))
            tb = read_safetensors(os.path.join(b, "checkpoints", f"step-{step:08d}", file))
            if sorted(ta) != sorted(tb):
                return False, f"{file}: different tensors"
            for k in ta:
                d = [abs(x - y) for x, y in zip(ta[k][1], tb[k][1])]
                worst = max([worst] + d)
                stray += sum(x > RUNS_ATOL for x in d)
                total += len(d)

        def losses(run):
            lines = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
            return [x["loss"] for x in lines if x.get("kind") == "train"]
        la, lb = losses(a), losses(b)
        loss_d = max((abs(x - y) / abs(y) for x, y in zip(la, lb)), default=math.inf)
        ok = len(la) == len(lb) == step and loss_d <= RUNS_LOSS_RTOL
        ok &= worst <= RUNS_ATOL or (stray <= RUNS_STRAY_SHARE * total and worst <= RUNS_STRAY_MAX)
        return ok, (f"{total} params+moments: max Δ {worst:.1e}, {stray} over atol {RUNS_ATOL:.0e}; "
                    f"{len(la)} losses rel Δ {loss_d:.1e} (rtol {RUNS_LOSS_RTOL:.0e})")

    def adapt(self):
        """3 steps of `dlm adapt` on the tiny base on the device and on the CPU (on a CPU-only
        run: twice on the CPU, which must agree exactly up to the same bounds)."""
        tok, base = self.tiny_base()
        runs = []
        for k, device in enumerate(["cpu", self.device]):
            out = os.path.join(self.tmp, f"adapt-{k}")
            self.run([self.dlm, "adapt", "--base", base, "--data", DATA, "--out", out, "--seq-len", "32",
                      "--micro-batch", "4", "--max-steps", "3", "--save-every", "3", "--lr", "1e-3",
                      "--schedule", "constant", "--shuffle-buffer", "16", "--anneal-steps", "2",
                      "--no-progress", "--device", device])
            runs.append(out)
        ok, numbers = self.compare_runs(runs[0], runs[1], 3)
        self.add("2 adapt 3 steps vs CPU", "f32", ok, f"{self.device} run against a cpu run: {numbers}")

    def data_parallel(self):
        tok, _ = self.tiny_base()
        one = os.path.join(self.tmp, "dp-one")
        two = os.path.join(self.tmp, "dp-two")
        self.run([self.dlm, *self.pretrain_args(tok, "diffusion", one, "4", "3"), "--device", self.device])
        args = [self.dlm, *self.pretrain_args(tok, "diffusion", two, "2", "3"), "--device", self.device]
        if not self.gpu:
            if not shutil.which("mpirun"):
                self.add("5 data-parallel 2 ranks", "f32", None, "no mpirun on this machine")
                return
            rc, _, err, secs = self.run(args + ["--world-size", "2"], check=False)
            if rc != 0 and "`mpi` feature" in err:
                self.add("5 data-parallel 2 ranks", "f32", None, "this dlm was built without the `mpi` feature")
                return
            backend = "MPI"
        else:
            # NCCL, torchrun-style: the ranks find each other at MASTER_ADDR:MASTER_PORT.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs, t = [], time.time()
            for rank in range(2):
                env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "LOCAL_RANK": str(rank if self.gpus >= 2 else 0),
                       "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")}
                log = open(os.path.join(self.tmp, f"rank{rank}.log"), "w+")
                procs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            # A rank that fails leaves the other waiting for it (up to 5 minutes at the rendezvous):
            # end the survivor soon after, and every rank after 4 minutes.
            failed_at = None
            while any(p.poll() is None for p, _ in procs):
                if failed_at is None and any(p.returncode not in (None, 0) for p, _ in procs):
                    failed_at = time.time()
                if time.time() - t > 240 or (failed_at and time.time() - failed_at > 15):
                    for p, _ in procs:
                        if p.poll() is None:
                            p.kill()
                time.sleep(0.2)
            secs = time.time() - t
            err = ""
            for rank, (_, log) in enumerate(procs):
                log.seek(0)
                err += "".join(f"rank {rank}: {line}" for line in log)
            self.log.write(f"\n$ RANK=0,1 WORLD_SIZE=2 {' '.join(args)}\n{err[-20000:]}\n[{secs:.0f} s]\n")
            rc = max(abs(p.returncode) for p, _ in procs)
            if rc != 0 and self.gpus < 2 and re.search(r"Duplicate GPU|[Ii]nvalid ?[Uu]sage", err):
                self.add("5 data-parallel 2 ranks", "f32", None,
                         "NCCL refuses two ranks on one GPU (needs 2 GPUs): libnccl loaded, rendezvous done")
                return
            backend = "NCCL"
        if rc != 0:
            raise RuntimeError(f"2 ranks exited {rc}: {error_line(err, rc)}")
        ok, numbers = self.compare_runs(one, two, 3)
        self.add("5 data-parallel 2 ranks", "f32", ok, f"{backend}, 2 ranks × 2 vs 1 rank × 4, 3 steps: {numbers}")

    # ---- 3. sampler trace parity ---------------------------------------------------------------

    def sampler(self):
        for name in TINY:
            self.guarded(f"3 sampler trace {name}", "f32", lambda name=name: self.sampler_one(name))
        for name in FAMILIES:
            self.guarded(f"3 sampler trace {name}", "f32", lambda name=name: self.family_sampler_one(name))

    def sampler_one(self, name):
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        p, i = g["sample_prefix_input"][1], g["sample_infill_input"][1]
        lines = [{"prompt_ids": p[:4], "length": 12}, {"prompt_ids": i[:4], "suffix_ids": i[12:], "length": 8}]
        req = self.write("sample.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        outs = self.dlm_json(["generate", os.path.join(FIXTURES, name), "--input", req, "--steps", "8", "--exact",
                              "--mask-id", str(MASK), "--json", "--trace"])
        same, total = 0, 0
        for case, out in zip(["prefix", "infill"], sorted(outs, key=lambda o: o["index"])):
            trace = rows(g[f"sample_{case}_trace"][1], 16)
            x0 = g[f"sample_{case}_x0"][1]
            # Row k of the fixture's trace is the input of forward k, i.e. the canvas after step k
            # of dlm's trace; after the last step comes the final x0, which is also the output.
            want = trace[1:] + [x0, x0]
            got = [t["tokens"] for t in out["trace"]] + [out["canvas"]]
            total += len(want)
            same += sum(a == b for a, b in zip(got, want)) if len(got) == len(want) else 0
        self.add(f"3 sampler trace {name}", "f32", same == total,
                 f"prefix+infill, T=8: {same}/{total} canvases (each step and x0) exact")

    def family_sampler_one(self, name):
        """The family's own sampler (§7.5), no `--sampler` given: every canvas of the trace, the
        output, the commits per step and the argmax x0 exact; the ranking scores within atol 2e-4."""
        g = read_safetensors(os.path.join(FIXTURES, name, "golden.safetensors"))
        score_key = "x0_p" if name == "llada-tiny" else "confidence"
        same, total, score_d, parts = 0, 0, 0.0, []
        for case, args in FAMILY_SAMPLES[name]:
            key = lambda k, case=case: g[f"sample_{case}_{k}"]
            prompt, output = key("prompt")[1], key("output")[1]
            (n_rows, width), trace = key("trace")
            steps = n_rows - 1
            out = self.dlm_json(["generate", os.path.join(FIXTURES, name), "--prompt-ids", ",".join(map(str, prompt)),
                                 "--length", str(len(output) - len(prompt)), "--steps", str(steps), "--exact",
                                 "--json", "--trace", *args])[0]
            # Row k of the fixture's trace is the canvas after step k, as dlm's step k reports it.
            want = rows(trace, width)[1:] + [output]
            got = [t["tokens"] for t in out["trace"]] + [out["canvas"]]
            masked = [[i >= len(prompt) for i in range(width)]] + [t["masked"] for t in out["trace"]]
            commits = [sum(a and not b for a, b in zip(m0, m1)) for m0, m1 in zip(masked, masked[1:])]
            scores = [math.inf if x is None else x for t in out["trace"] for x in t["confidence"]]
            good = sum(a == b for a, b in zip(got, want)) if len(got) == len(want) else 0
            exact = (commits == key("num_transfer_tokens")[1]
                     and flat([t["x0"] for t in out["trace"]]) == key("x0")[1])
            same += good if exact else 0
            total += len(want)
            score_d = max(score_d, max_abs_diff(scores, key(score_key)[1]))
            parts.append(f"{case} {good}/{len(want)}{'' if exact else ' (commits or x0 differ)'}")
        self.add(f"3 sampler trace {name}", "f32", same == total and score_d <= FAMILY_SCORE_ATOL,
                 f"{', '.join(parts)} canvases (each step and the output) exact, commits and x0 exact; "
                 f"{score_key} max Δ {score_d:.1e} (atol {FAMILY_SCORE_ATOL:.0e})")

    # ---- 4. speed ------------------------------------------------------------------------------

    def gpu_memory(self, argv, env=None):
        """Runs argv while sampling nvidia-smi; (rc, out, err, secs, peak MiB used or None)."""
        if not shutil.which("nvidia-smi"):
            return (*self.run(argv, env=env, check=False), None)
        peak, stop = [0], threading.Event()

        def sample():
            while not stop.is_set():
                p = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                    "-i", "0"], capture_output=True, text=True)
                try:
                    peak[0] = max(peak[0], int(p.stdout.split()[0]))
                except (ValueError, IndexError):
                    pass
                stop.wait(0.2)
        th = threading.Thread(target=sample)
        th.start()
        try:
            res = self.run(argv, env=env, check=False)
        finally:
            stop.set()
            th.join()
        return (*res, peak[0])

    def bench(self, dtype):
        """dlm's benchmarks on the built-in 4M model (context 256; GPT-2 small for train), sized for the device,
        each next to its PyTorch script on the same device when a Python has torch."""
        big = self.gpu
        size = (lambda gpu, cpu: gpu if big else cpu)
        length, steps = size("192", "32"), size("64", "8")
        benches = [
            ("4 bench forward", ["bench", "forward", BUILTIN, "--seq", size("256", "64"), "--batch", size("8", "1"),
                                 "--iters", size("5", "2")],
             r"forward .*: ([\d.]+ ms, \d+ tokens/s)", None, None),
            ("4 bench sample", ["bench", "sample", BUILTIN, "--length", length, "--steps", steps, "--exact-only"],
             r"exact.*?([\d.]+ ms/step)",
             [os.path.join(ROOT, "bench", "pytorch_sample.py"), BUILTIN, "--length", length, "--steps", steps],
             r"([\d.]+ ms/step)"),
            ("4 bench train", ["bench", "train", "--config", size("small", "tiny"), "--seq", size("512", "64"),
                               "--batch", size("8", "1"), "--steps", size("3", "2")],
             r"train step .*?: ([\d.]+ s/step).*?(peak RSS \d+ MB)",
             [os.path.join(ROOT, "bench", "pytorch_train_step.py"), "--seq", "512", "--batch", "8", "--steps", "3"]
             if big else None,
             r"([\d.]+ s) = forward"),
        ]
        for check, argv, pattern, torch_argv, torch_pattern in benches:
            def one(check=check, argv=argv, pattern=pattern, torch_argv=torch_argv, torch_pattern=torch_pattern):
                rc, out, err, secs, mem = self.gpu_memory([self.dlm, *argv, "--device", self.device, "--dtype", dtype])
                if rc != 0:
                    raise RuntimeError(error_line(err, rc))
                m = re.search(pattern, out, re.S)
                numbers = f"{' '.join(a for a in argv[2:] if a != BUILTIN)}: dlm " + (
                    ", ".join(m.groups()) if m else out.strip().splitlines()[0])
                if mem is not None:
                    numbers += f", GPU memory {mem} MiB (nvidia-smi peak)"
                if torch_argv:
                    numbers += "; " + self.pytorch(torch_argv, torch_pattern, dtype)
                elif not big and check == "4 bench train":
                    numbers += "; PyTorch: its script is GPT-2 small, not run at CPU sizes"
                self.add(check, dtype, True, numbers)
            self.guarded(check, dtype, one)

    def pytorch(self, argv, pattern, dtype):
        if not self.torch_python:
            return "PyTorch: skipped (no Python with torch and transformers here)"
        rc, out, err, _, mem = self.gpu_memory([self.torch_python, *argv, "--dtype", {"f32": "fp32"}.get(dtype, dtype),
                                                "--device", "cuda" if self.gpu else "cpu"])
        if rc != 0:
            return f"PyTorch failed: {error_line(err, rc)}"
        m = re.search(pattern, out)
        return f"PyTorch {m.group(1) if m else out.strip()}" + (f", {mem} MiB" if mem is not None else "")

    # ---- the table -----------------------------------------------------------------------------

    def table(self):
        lines = ["| check | device | dtype | result | numbers |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in self.rows]
        return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dlm", required=True, help="the dlm binary")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="the table, as Markdown (the log goes beside it)")
    p.add_argument("--torch-python", help="a Python with torch and transformers, for the PyTorch columns")
    p.add_argument("--header", default="", help="a line put above the table (machine, build)")
    p.add_argument("--checks", default="12345", help="which of the checks 1-5 to run (default all)")
    args = p.parse_args()
    c = Checker(args)
    start = time.time()
    dtypes = ["f32", "bf16"]
    if "1" in args.checks:
        for dtype in dtypes:
            c.forward(dtype)
    if "2" in args.checks:
        for dtype in dtypes:
            c.training(dtype)
        c.guarded("2 adapt 3 steps vs CPU", "f32", c.adapt)
    if "3" in args.checks:
        c.sampler()
    if "4" in args.checks:
        for dtype in dtypes:
            c.bench(dtype)
    if "5" in args.checks:
        c.guarded("5 data-parallel 2 ranks", "f32", c.data_parallel)
    table = c.table()
    failed = sum(r[3] == "FAIL" for r in c.rows)
    summary = (f"{len(c.rows)} rows: {sum(r[3] == 'PASS' for r in c.rows)} PASS, {failed} FAIL, "
               f"{sum(r[3] == 'SKIP' for r in c.rows)} SKIP; {time.time() - start:.0f} s")
    text = (args.header + "\n\n" if args.header else "") + table + "\n\n" + summary + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print("\n" + text)
    shutil.rmtree(c.tmp, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
