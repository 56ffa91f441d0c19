"""Evaluation: plain scoring, the continuous cache pointer and dynamic evaluation."""

from awdlm.evaluation.scoring import bits_per_character, evaluate, perplexity, score_stream, token_log_probs

__all__ = ["bits_per_character", "evaluate", "perplexity", "score_stream", "token_log_probs"]
