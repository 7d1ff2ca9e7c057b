"""In silico experiments: virtual screens, inverse design, explanations and the lab in the loop."""

from __future__ import annotations

__all__: list[str] = []
