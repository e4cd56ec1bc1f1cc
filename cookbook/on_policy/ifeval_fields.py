"""Checking the IFEval fields a prompt row carries (`instruction_id_list`, `kwargs`) when it is read,
so a bad one fails naming its file and line instead of in the middle of a round.

`cookbook.eval.ifeval.check_row` checks the shape (known ids, one kwargs dict per instruction). On top
of that each checker is built with its kwargs here: an argument the checker does not take fails now,
and so does a missing one, which the checker would otherwise fill with a random draw of its own (a
reward that changes from call to call).
"""

from __future__ import annotations

import random
from typing import Any


def ifeval_row(ids: Any, kwargs: Any, prompt: str, where: str) -> dict[str, Any]:
    """The `PromptItem.ifeval` dict for these fields; ValueError naming `where` when they are unusable."""
    from cookbook.eval.ifeval import check_row, instruction_registry

    registry = instruction_registry()
    row = check_row({"key": where, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs},
                    where, set(registry))
    for index, (instruction_id, arguments) in enumerate(zip(row["instruction_id_list"], row["kwargs"])):
        _check_arguments(registry[instruction_id](instruction_id), instruction_id, arguments,
                         f"{where}: kwargs[{index}] ({instruction_id})")
    return {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"], "prompt": prompt}


def _check_arguments(checker: Any, instruction_id: str, arguments: dict[str, Any], where: str) -> None:
    given = {name: value for name, value in arguments.items() if value is not None}
    expected = checker.get_instruction_args_keys()
    unexpected = sorted(set(given) - set(expected))
    if unexpected:
        raise ValueError(f"{where}: unexpected argument(s) {unexpected}; this checker takes "
                         f"{expected or 'no arguments'}")
    missing = [name for name in expected if name not in given]
    if missing:
        raise ValueError(f"{where}: missing argument(s) {missing} (the checker would pick random values)")
    drawn = [_build(checker, given, seed) for seed in (1, 2)]
    if isinstance(drawn[0], str):
        raise ValueError(f"{where}: {drawn[0]}")
    # A value the checker refuses (a letter "ab", a negative count) is replaced by a random one.
    replaced = sorted(name for name in expected if drawn[0][name] != drawn[1][name])
    if replaced:
        raise ValueError(f"{where}: invalid value for {replaced}: {[given[name] for name in replaced]}")


def _build(checker: Any, given: dict[str, Any], seed: int) -> dict[str, Any] | str:
    """The checker's arguments once built with `given` under `seed` (or why building failed)."""
    state = random.getstate()
    random.seed(seed)
    try:
        checker.build_description(**given)
        return dict(checker.get_instruction_args() or {})
    except (TypeError, ValueError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        random.setstate(state)
