"""Tiny models and a tokenizer for tests: built from configs, random weights, no downloads.

Tests, benchmarks and the app's fixtures all use these, so every architecture path
(Llama, Qwen2, GPT-2 shapes) is exercised in seconds.
"""

from __future__ import annotations

import torch

from curator.models import LoadedModel, wrap_model

# ChatML, as SmolLM2 and Qwen2 use it, so chat-template code paths run in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def tiny_tokenizer(chat_template: bool = True):
    """A byte-level tokenizer (256 byte tokens + specials), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    for tok in specials:
        vocab[tok] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=512,
    )
    if chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_causal_lm(arch: str = "llama", vocab_size: int = 261, seed: int = 0,
                   layers: int = 2, hidden: int = 32, max_positions: int = 512):
    """A randomly initialised causal LM of the given architecture family."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
    )

    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=max_positions, tie_word_embeddings=True)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=max_positions, tie_word_embeddings=False)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                         n_positions=max_positions, bos_token_id=257, eos_token_id=258)
    else:
        raise ValueError(f"unknown architecture {arch!r}; use one of {ARCHITECTURES}")
    cfg.pad_token_id = 256
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


def tiny_loaded_model(arch: str = "llama", seed: int = 0, dtype: str | torch.dtype = "fp32",
                      **kwargs) -> LoadedModel:
    """A tiny model and tokenizer wrapped as curator.models.load_model returns them (CPU, fp32)."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(arch, vocab_size=len(tok), seed=seed, **kwargs)
    return wrap_model(model, tok, name=f"tiny-{arch}-{seed}", device="cpu", dtype=dtype)
