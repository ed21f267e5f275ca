"""Answer extraction shared by every task, so the RL reward and the evaluation score read answers the same way.

Reference: d1 `diffu-grpo/reward_func.py` (`extract_xml_answer`: split on the last `<answer>`, cut at the next
`</answer>`, strip).

Departures:
1. No tag returns None instead of the whole text (d1's `extract_xml_answer` returns the text unchanged), so a
   caller can tell "no answer" from "an answer".
2. d1's Sudoku and Countdown rewards use the regex `<answer>(.*?)</answer>`, which needs the closing tag. Here an
   unclosed last tag still yields its content: a diffusion model writes a fixed number of tokens, and an answer cut
   off before `</answer>` is still scored on what it contains.
"""

from __future__ import annotations


def last_tag_content(text: str, tag: str = "answer") -> str | None:
    """Content of the last `<tag>...</tag>`, stripped.

    If the last opening tag is never closed, the content runs to the end of the text. Returns None when the text
    has no opening tag.
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.rfind(opening)
    if start < 0:
        return None
    body = text[start + len(opening) :]
    end = body.find(closing)
    return (body if end < 0 else body[:end]).strip()
