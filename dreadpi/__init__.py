"""dreadpi: a Demand Response Enabling Device (AS/NZS 4755) for a Raspberry Pi and a relay board."""

__version__ = "0.1.0"
