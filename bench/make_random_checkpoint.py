#!/usr/bin/env python3
"""Writes a random-weight checkpoint at a released diffusion LM's exact shape, for memory and
speed benches of models whose real weights cannot be downloaded here (bench/big-model-memory.sh).

usage: bench/make_random_checkpoint.py {llada-8b,llama-7b} OUT_DIR

llada-8b is LLaDA-8B-Instruct; llama-7b is LLaMA-2-7B, the shape of DiffuLLaMA-7B (the paper's
7B model, whose [MASK] dlm takes from LLaMA-2's vocabulary as DiffuLLaMA does).

The layout is the released one: the family's config.json keys, bf16 safetensors in shards of at
most 3 GB with a model.safetensors.index.json. Values are random bf16 of magnitude 2^-7..2^-5
with random signs (the size of the released models' init std, 0.02), norms 1.0: the forward stays
finite, and the text it samples means nothing. Standard library only; about 16 GB for llada-8b,
13.5 GB for llama-7b.
"""
import json
import os
import struct
import sys

# LLaDA-8B-Instruct's config.json (GSAI-ML/LLaDA-8B-Instruct), the keys dlm reads.
LLADA_8B = {
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
    "activation_type": "silu", "layer_norm_type": "rms", "rms_norm_eps": 1e-05,
    "alibi": False, "rope": True, "rope_theta": 500000.0, "flash_attention": False,
    "attention_layer_norm": False, "include_bias": False, "include_qkv_bias": False,
    "bias_for_layer_norm": False, "layer_norm_with_affine": True, "input_emb_norm": False,
    "scale_logits": False, "multi_query_attention": None, "block_group_size": 1,
    "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
    "mlp_hidden_size": 12288, "mlp_ratio": 4, "vocab_size": 126464, "embedding_size": 126464,
    "weight_tying": False, "max_sequence_length": 4096, "mask_token_id": 126336,
    "eos_token_id": 126081, "pad_token_id": 126081, "torch_dtype": "bfloat16",
}


def llada_tensors(c):
    d, f, v = c["d_model"], c["mlp_hidden_size"], c["embedding_size"]
    kv = c["n_kv_heads"] * d // c["n_heads"]
    out = [("model.transformer.wte.weight", (v, d))]
    for i in range(c["n_layers"]):
        b = f"model.transformer.blocks.{i}."
        out += [(b + "attn_norm.weight", (d,)), (b + "q_proj.weight", (d, d)),
                (b + "k_proj.weight", (kv, d)), (b + "v_proj.weight", (kv, d)),
                (b + "attn_out.weight", (d, d)), (b + "ff_norm.weight", (d,)),
                (b + "ff_proj.weight", (f, d)), (b + "up_proj.weight", (f, d)),
                (b + "ff_out.weight", (d, f))]
    out += [("model.transformer.ln_f.weight", (d,)), ("model.transformer.ff_out.weight", (v, d))]
    return out


# LLaMA-2-7B's config.json (meta-llama/Llama-2-7b-hf, the base of DiffuLLaMA-7B), stored bf16.
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def llama_tensors(c):
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * d // c["num_attention_heads"]
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(c["num_hidden_layers"]):
        b = f"model.layers.{i}."
        out += [(b + "input_layernorm.weight", (d,)), (b + "self_attn.q_proj.weight", (d, d)),
                (b + "self_attn.k_proj.weight", (kv, d)), (b + "self_attn.v_proj.weight", (kv, d)),
                (b + "self_attn.o_proj.weight", (d, d)),
                (b + "post_attention_layernorm.weight", (d,)),
                (b + "mlp.gate_proj.weight", (f, d)), (b + "mlp.up_proj.weight", (f, d)),
                (b + "mlp.down_proj.weight", (d, f))]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    return out


FAMILIES = {"llada-8b": (LLADA_8B, llada_tensors), "llama-7b": (LLAMA_7B, llama_tensors)}
SHARD_BYTES = 3 << 30
CHUNK = 64 << 20


def random_bf16(n_bytes):
    """n_bytes of little-endian bf16: a random low byte (mantissa and the exponent's last bit),
    a high byte of sign | exponent 120 (so |x| in [2^-7, 2^-5))."""
    buf = bytearray(os.urandom(n_bytes))
    table = bytes(0xBC if b & 1 else 0x3C for b in range(256))
    buf[1::2] = bytes(buf[1::2]).translate(table)
    return bytes(buf)


def write_shard(path, tensors, noise):
    header, offset = {}, 0
    for name, shape in tensors:
        n = 2 * prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name, shape in tensors:
            n = 2 * prod(shape)
            if len(shape) == 1:  # norm weights: 1.0
                out.write(b"\x80\x3f" * (n // 2))
                continue
            while n > 0:
                k = min(n, len(noise))
                out.write(noise[:k])
                n -= k
    os.replace(tmp, path)
    return offset


def prod(shape):
    p = 1
    for s in shape:
        p *= s
    return p


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in FAMILIES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(FAMILIES)}}} OUT_DIR")
    config, tensors_of = FAMILIES[sys.argv[1]]
    out = sys.argv[2]
    index_path = os.path.join(out, "model.safetensors.index.json")
    if os.path.exists(index_path):
        print(f"{out}: already written")
        return
    os.makedirs(out, exist_ok=True)
    shards, current, size = [], [], 0
    for name, shape in tensors_of(config):
        n = 2 * prod(shape)
        if current and size + n > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    noise = random_bf16(CHUNK)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(out, file), shard, noise)
        weight_map.update({name: file for name, _ in shard})
        print(f"{file}: {len(shard)} tensors, {total / 1e9:.1f} GB so far", flush=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(index_path, "w") as f:  # last: its presence means the checkpoint is complete
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"wrote {out}: {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
