"""Skill1: train LLM agents that select, use and distill skills, from one task reward."""

__version__ = "0.1.0"
