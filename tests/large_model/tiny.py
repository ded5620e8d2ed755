"""A tiny random Qwen2 model with a byte-level BPE tokenizer, and a toy instruction set, for fast tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOY_CATEGORIES = ("timeout", "database_error", "permission_error")
TOY_SEVERITIES = ("low", "high")
TOY_LINES = {
    "timeout": ["ERROR gateway upstream request to {svc} timed out after 30000 ms", "WARN {svc} deadline exceeded"],
    "database_error": ["ERROR {svc} query failed: deadlock detected on table orders", "ERROR {svc} db pool error"],
    "permission_error": ["WARN {svc} access denied for user 4711", "ERROR {svc} 403 forbidden: missing role"],
}
TOY_SEVERITY = {"timeout": "high", "database_error": "high", "permission_error": "low"}
TOY_TEXT = {
    "timeout": ("upstream {svc} too slow", "Scale {svc} and raise the gateway timeout."),
    "database_error": ("lock contention in the database of {svc}", "Kill the blocking transaction of {svc}."),
    "permission_error": ("{svc} lacks a role", "Grant {svc} the missing role."),
}
SERVICES = ("orders", "billing", "auth", "search")


def toy_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Classification records whose category shows in their lines."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = TOY_CATEGORIES[i % len(TOY_CATEGORIES)]
        svc = rng.choice(SERVICES)
        lines = [f"INFO {svc} handling request {rng.randint(1, 999)}"]
        lines += [t.format(svc=svc) for t in TOY_LINES[cat]]
        lines.append(f"INFO {svc} request done")
        cause, response = TOY_TEXT[cat]
        rows.append(
            {
                "sequence_id": f"toy-{i}",
                "log_entries": lines,
                "category": cat,
                "severity": TOY_SEVERITY[cat],
                "root_cause_service": svc,
                "root_cause": cause.format(svc=svc),
                "suggested_response": response.format(svc=svc),
                "lang": "en",
            }
        )
    return rows


def write_toy_data(folder: Path, n: int = 48) -> Path:
    """Toy records as JSONL with a labels.json beside them; returns the JSONL path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_records(n)), encoding="utf-8")
    labels = {"categories": list(TOY_CATEGORIES), "severities": list(TOY_SEVERITIES)}
    (folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    return path


def make_tiny_base(folder: Path, max_positions: int = 1024, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-64 Qwen2ForCausalLM with a ChatML byte-level BPE tokenizer to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from large_model import prompts

    corpus = [
        prompts.system_prompt("en", TOY_CATEGORIES, TOY_SEVERITIES),
        prompts.system_prompt("zh", TOY_CATEGORIES, TOY_SEVERITIES),
    ]
    for row in toy_records(30):
        corpus.append("\n".join(row["log_entries"]))
        corpus.append(
            prompts.format_target(row["category"], row["severity"], "s", row["root_cause"], row["suggested_response"])
        )
    tok_model = Tokenizer(models.BPE())
    tok_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok_model.train_from_iterator(corpus * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok_model, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    assert model.generation_config is not None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
