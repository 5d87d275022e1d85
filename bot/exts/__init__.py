"""One extension per area of the workshop; each ends with `async def setup(bot)`."""
