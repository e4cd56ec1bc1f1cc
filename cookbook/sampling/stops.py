"""When a completion ends: a stop token, a stop string, or the token budget."""

from __future__ import annotations

from collections.abc import Sequence


class StopRule:
    """Decides after each new token whether a row is done.

    Stop strings are found by decoding the row's last few generated tokens with the tokenizer (only
    when stop strings are given: decoding costs tens of microseconds a row and step). Every token
    decodes to at least one character, so the last `longest stop string` tokens hold any stop
    string that the newest token completed; the prompt is never searched.
    """

    def __init__(
        self,
        stop_token_ids: Sequence[int],
        max_new_tokens: int,
        stop_strings: Sequence[str] | None = None,
        tokenizer=None,
    ) -> None:
        self.stop_token_ids = frozenset(stop_token_ids)
        self.max_new_tokens = max_new_tokens
        self.stop_strings = tuple(s for s in stop_strings or () if s)
        if self.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to decode completions")
        self.tokenizer = tokenizer
        self.tail_tokens = max((len(s) for s in self.stop_strings), default=0)

    def stopped(self, tokens: list[int]) -> bool:
        """True when `tokens` (a row's completion so far) ends with a stop token or stop string."""
        if tokens[-1] in self.stop_token_ids:
            return True
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(tokens[-self.tail_tokens :], skip_special_tokens=False)
        return any(stop in tail for stop in self.stop_strings)

    def finished(self, tokens: list[int]) -> tuple[bool, bool]:
        """(done, stopped): done when stopped or the budget is spent."""
        stopped = self.stopped(tokens)
        return stopped or len(tokens) >= self.max_new_tokens, stopped
