"""Public datasets users will want, with their source URLs and published checksums."""

from __future__ import annotations
