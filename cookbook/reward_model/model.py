"""`SequenceScoreModel`: a Hugging Face `...ForSequenceClassification` (one label) run on the batch
layouts of `batching.py`, returning one score per sequence.

transformers' own forward applies the head to every position and pools one of them per row, which
cannot serve packed or prefix-shared rows (several sequences in a row). Here the decoder runs once
over the rows, the hidden states of the scored slots are gathered, and only they go through the
head, in float32 (the decoder runs in the precision's autocast context). The classifier's weights
are the module's own (`classifier.model.*`, `classifier.score.weight`), so the loop's checkpoint
writer saves them in the layout `AutoModelForSequenceClassification.from_pretrained` loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cookbook.training.attention import AttentionSpans, use_span_attention
from cookbook.training.lora import ADAPTER_NAME

SAVE_PREFIX = "classifier."  # state-dict keys of the wrapper: the classifier's, under this prefix


def score_head(classifier: nn.Module) -> nn.Linear:
    """The classifier's output layer (`score`, transformers' name for it in decoder models); with LoRA,
    the copy of it that peft trains."""
    head = getattr(classifier, "score", None)
    trained_copies = getattr(head, "modules_to_save", None)
    if trained_copies is not None:
        head = trained_copies[ADAPTER_NAME]
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(classifier).__name__} has no one-output `score` layer to train as a reward head")
    return head


def is_sequence_classifier(config) -> bool:
    """Whether a checkpoint's config names a `...ForSequenceClassification` (a reward model's own head)."""
    return any(name.endswith("ForSequenceClassification") for name in (getattr(config, "architectures", None) or []))


@torch.no_grad()
def zero_new_head(classifier: nn.Module) -> bool:
    """Set the head to zero when transformers made it new (the checkpoint was a causal LM); True then.
    Every score is 0 at step 0, so the loss starts at exactly ln 2 and the scores centred, and the
    first steps move the head rather than push the decoder through a random direction."""
    if is_sequence_classifier(classifier.config):  # read from the checkpoint; save_pretrained rewrites it
        return False
    for weight in classifier.score.parameters():  # with LoRA also the copy peft trains
        weight.zero_()
    return True


class SequenceScoreModel(nn.Module):
    """forward(batch rows, scored slots) -> a float32 score per scored slot [S]."""

    def __init__(self, classifier: nn.Module,
                 compute_context: Callable[[], contextlib.AbstractContextManager] | None = None):
        super().__init__()
        score_head(classifier)
        self.classifier = classifier
        self.compute_context = compute_context or contextlib.nullcontext

    def forward(self, input_ids: Tensor, score_slots: Tensor, attention_mask=None,
                position_ids: Tensor | None = None) -> Tensor:
        decoder_kwargs = {}
        if isinstance(attention_mask, AttentionSpans):
            use_span_attention(self.classifier)
            decoder_kwargs, attention_mask = {"attention_spans": attention_mask}, None
        with self.compute_context():
            hidden = self.classifier.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **decoder_kwargs,
            ).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1])[score_slots].float()
        head = score_head(self.classifier)
        bias = head.bias.float() if head.bias is not None else None
        return F.linear(selected, head.weight.float(), bias).squeeze(-1)
