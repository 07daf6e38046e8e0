"""Engines: loaded models behind one protocol (:mod:`nerve.engines.base`).

* :mod:`nerve.engines.vllm` — a causal LM in vLLM, decoded under a JSON schema or grammar.
* :mod:`nerve.engines.cpu_plugin` — the vLLM plugin that masks CPU logits in their own dtype.
* :mod:`nerve.engines.encoder` — a token classifier with a micro-batcher.
* :mod:`nerve.engines.token_tagger` — the token-classification model, its checkpoint format and inference.

Nothing here knows prompts, schemas or entities beyond what a request carries; that is the extraction layer's
(:mod:`nerve.extraction`).
"""
