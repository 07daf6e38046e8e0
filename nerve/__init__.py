"""nerve: named-entity extraction with small instruction-tuned LLMs, served through vLLM."""

__version__ = "0.1.0"
