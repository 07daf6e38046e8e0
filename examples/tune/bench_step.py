"""Time LoRA training steps: full vs selective logits, padded vs packed, float32 vs bfloat16 base.

    python examples/tune/bench_step.py --model smollm2-135m-instruct --steps 3
    python examples/tune/bench_step.py --model /path/to/tiny-model --task conll2003

Uses rendered CoNLL-2003 (or synthetic) examples exactly as training does; prints one line per setting.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.paths import datasets_dir
    from nerve.tuning.collate import PackedCollator, PaddingCollator, pack_features
    from nerve.tuning.data import encode_causal, end_of_turn, load_examples, subset
    from nerve.tuning.loss import SelectiveLogits, causal_lm_loss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="conll2003")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    card = TaskCard.preset(args.task)
    data = datasets_dir()
    name = {"conll2003": "conll2003/eng.testa", "cluener": "cluener/dev.jsonl"}[args.task]
    examples = subset(load_examples(data / name), args.batch * (args.steps + 1), seed=0)
    feats = [e.as_feature() for e in encode_causal(tok, card, examples, end_of_turn(tok, card))]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [feats[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + 1)]
    n_tokens = sum(len(f["input_ids"]) for f in feats[args.batch:])
    n_labels = sum(sum(x != -100 for x in f["labels"]) for f in feats[args.batch:])
    print(f"{args.model}: {args.steps} steps of {args.batch} examples, {n_tokens} tokens, {n_labels} labelled, "
          f"{torch.get_num_threads()} threads")

    from peft import LoraConfig, get_peft_model

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for packing in (False, True):
            for selective in (False, True):
                hook = SelectiveLogits(model) if selective else None
                times = []
                for i, b in enumerate(batches):
                    if packing:
                        batch = PackedCollator(pad)(pack_features(b, sum(len(f["input_ids"]) for f in b)))
                        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
                    else:
                        batch = PaddingCollator(pad)(b)
                        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                    t = time.perf_counter()
                    loss, _ = causal_lm_loss(model, inputs, batch["labels"], selective=hook)
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    if i:  # the first step warms up
                        times.append(time.perf_counter() - t)
                if hook is not None:
                    hook.remove()
                step = sum(times) / len(times)
                print(f"  {dtype_name:8s} {'packed' if packing else 'padded':6s} "
                      f"{'selective' if selective else 'full     '} logits: {step:6.2f} s/step, "
                      f"{n_tokens / sum(times):7.0f} tokens/s, loss {loss.item():.3f}")
        del model, base, opt


if __name__ == "__main__":
    main()
