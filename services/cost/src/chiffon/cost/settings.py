"""The cost service's settings (``CHIFFON_*`` environment variables or the config file).

Price overrides (``CHIFFON_PRICE_OVERRIDES``) are a setting every process reads
(``ChiffonSettings.price_overrides``): the executor prices a call's worst case with the
same book the cost service prices it with.
"""

from __future__ import annotations

from pydantic import Field

from chiffon.core.settings import ChiffonSettings


class CostSettings(ChiffonSettings):
    # Calls priced per pull: one append pipeline and one round of acks for the lot.
    # 3,000 rather than 1,000: per call, about 6% less of the pricer's CPU and 10% less
    # of NATS's (bench:cost, 5 rounds of each side by side, load 9-17; at load 4-6 within
    # the rounds' spread); 5,000 no better. Fewer, larger pulls: fewer appends and
    # projection transactions per call.
    pricer_batch: int = Field(default=3000, ge=1, le=10_000)
    # Seconds a priced-but-unacknowledged call waits before it is delivered again
    # (to this replica after a restart, or to another one).
    pricer_ack_wait_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)
