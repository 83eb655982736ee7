"""Fine-tuning any model ``interp`` loads: low-rank adapters or every weight, a loss on chosen positions plus an
optional KL-to-base term, checkpoints with exact resume, and the result saved as a Hugging Face folder.

    >>> from interp import finetune
    >>> data = [finetune.chat_example(model.tokenizer, "hi", "hello there")]
    >>> tuned = finetune.finetune(model, data, finetune.FinetuneConfig(steps=50))
    >>> tuned.save("tuned-model")           # interp.load and transformers read it
"""

from interp.finetune.data import Example, chat_example, text_example
from interp.finetune.lora import TARGETS, LoRA, check_targets, lora, merge
from interp.finetune.train import (
    FinetuneConfig,
    Finetuned,
    finetune,
    next_token_kl,
    target_kl,
    target_nll,
)

__all__ = [
    "TARGETS", "Example", "FinetuneConfig", "Finetuned", "LoRA", "chat_example", "check_targets", "finetune", "lora",
    "merge",
    "next_token_kl", "target_kl", "target_nll", "text_example",
]
