"""duftd: the DUFT Data Task Engine as an asyncio daemon."""

__version__ = "0.1.0"
