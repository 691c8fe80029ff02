"""Builds a small Llama for vLLM offline: random weights from a fixed seed, a WordLevel tokenizer built in
code, a chat template; `save_pretrained` to a directory. Nothing is downloaded.

    python tiny_model.py DIR [--layers 4 --hidden 256 --heads 4 --kv-heads 2 --vocab 1024 --seed 1234]

The tokenizer maps the words "w0" ... "w{V-5}" to ids 4 ... V-1 (ids 0-3 are <unk>, <s>, </s>, <pad>), split on
whitespace, so any text made of those words round-trips and `ids_to_text` writes a prompt for given ids.
The chat template joins messages as "<s> role: content </s>" lines so a multi-turn chat grows a prefix.

Weights are drawn with a larger spread than Llama's default (initializer_range 0.1 against 0.02), so
logits are not all nearly equal: greedy decoding then has clear winners and a wrong KV block moves the
logprobs far more than float rounding does.
"""

from __future__ import annotations

import argparse
import json
import os

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }}: {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant: {% endif %}"
)


def word(i: int) -> str:
    """The word for token id i (i >= len(SPECIAL))."""
    return f"w{i - len(SPECIAL)}"


def ids_to_text(ids) -> str:
    return " ".join(word(int(i)) for i in ids)


def build(out_dir: str, layers: int = 4, hidden: int = 256, heads: int = 4, kv_heads: int = 2,
          vocab: int = 1024, intermediate: int | None = None, max_positions: int = 8192, seed: int = 1234,
          init_range: float = 0.1) -> str:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    # Extra words for the chat template's role names; they are ordinary tokens.
    extra = ["user:", "assistant:", "system:", "tool:"]
    vocab_map = {t: i for i, t in enumerate(SPECIAL)}
    for i in range(len(SPECIAL), vocab - len(extra)):
        vocab_map[word(i)] = i
    for t in extra:
        vocab_map[t] = len(vocab_map)
    assert len(vocab_map) == vocab
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
        initializer_range=init_range, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    # vLLM reads the generation config; greedy defaults keep requests explicit.
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}, f)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    print(build(a.out_dir, a.layers, a.hidden, a.heads, a.kv_heads, a.vocab, a.intermediate, seed=a.seed))


if __name__ == "__main__":
    main()
