"""The pure core: no I/O, no asyncio, no clocks. Everything here is a
function of its arguments, tested directly and with hypothesis."""
