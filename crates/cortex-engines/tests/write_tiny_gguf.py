"""Writes a tiny llama-architecture GGUF that llama-server can load and generate from: random
F32 weights (2 layers, 64 wide), a SentencePiece-style vocabulary of byte tokens plus a few
words, and a ChatML chat template. Nothing is downloaded. Usage: write_tiny_gguf.py OUT.gguf
"""

import sys

import gguf
import numpy as np

N_EMBD, N_HEAD, N_LAYER, N_FF, N_CTX = 64, 4, 2, 128, 256


def vocabulary():
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(gguf.TokenType.BYTE)
    words = ["\u2581", "\u2581hello", "\u2581world", "\u2581the", "\u2581a", "\u2581is",
             "\u2581user", "\u2581assistant", "\u2581say", "\u2581Say"]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for word in words:
        tokens.append(word)
        types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * len(tokens)
    for i, word in enumerate(words):
        scores[len(tokens) - len(words) + i] = -float(i)
    return tokens, scores, types


def main(out):
    rng = np.random.default_rng(0)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    def weights(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("cortex-tiny")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}"
    )

    # numpy shapes are ggml's dimensions reversed: token_embd is {n_embd, n_vocab} in ggml.
    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_k.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_v.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_output.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", weights(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1])
