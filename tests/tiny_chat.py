"""The toy chat model of :mod:`interp.organisms.toy` under the names the tests use: a random tiny Llama-family
model with a word-level tokenizer (:data:`WORDS`) and a ChatML-like chat template."""

from interp.organisms.toy import CHAT_TEMPLATE, ROLES, SPECIALS, WORDS, vocabulary
from interp.organisms.toy import toy_chat_folder as tiny_chat_folder
from interp.organisms.toy import toy_chat_model as tiny_chat_model

__all__ = ["CHAT_TEMPLATE", "ROLES", "SPECIALS", "WORDS", "tiny_chat_folder", "tiny_chat_model", "vocabulary"]
