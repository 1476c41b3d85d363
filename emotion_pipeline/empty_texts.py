"""Empty texts: one rule for every entry point.

An empty text (an empty string, only whitespace, a JSON null or missing key, a null cell) is never given a
label. What happens to it depends on how answers are matched to texts:
- where each answer carries its line (emotion-predict, emotion-batch), an empty text is skipped with a
  warning naming its line: one stray blank line must not fail a million-line job, and nothing shifts;
- where answers are matched by position (predict_proba, an emotion-serve request), it is refused: skipping
  it would silently pair every later answer with the wrong text.
Input with no text at all is an error.
"""

from __future__ import annotations

from emotion_pipeline.errors import UserError


def is_empty(text: object) -> bool:
    """An empty text by the rule above: None, or a string with nothing but whitespace."""
    return text is None or not str(text).strip()


def skipped_empty(where: str, number: int) -> str:
    """The warning for an empty text skipped at ``where`` (line, argument) ``number``."""
    return f"warning: skipped the empty text at {where} {number}"


def no_text_at_all() -> UserError:
    return UserError("no text to classify: the input is empty or holds only empty texts.")


def empty_refusal(texts: list) -> str | None:
    """For callers that match answers by position: why ``texts`` cannot be classified as given, or None."""
    empty = [i for i, text in enumerate(texts) if is_empty(text)]
    if not empty:
        return None
    return (f"texts[{empty[0]}]: empty (or only whitespace), {len(empty)} such text(s) in all: there is nothing to "
            f"classify; leave them out.")
