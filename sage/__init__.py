"""SAGE-OPD: selective agent-guided multi-turn on-policy distillation of LLM agents on ALFWorld."""
