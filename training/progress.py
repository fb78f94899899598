"""Progress bars for long jobs: tqdm on stderr, quiet when disabled (non-zero ranks, tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, disable: bool = False, **kw: Any) -> Any:
    """A tqdm bar over `items`, refreshed at most every two seconds so logs stay readable."""
    return tqdm(items, desc=desc, disable=disable, mininterval=2.0, dynamic_ncols=True, **kw)
