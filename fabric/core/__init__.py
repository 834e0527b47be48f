"""The pure layer of a node and of a client: what decides, run unchanged by the simulator. No
module here does I/O, reads a clock or draws unseeded randomness (tests/test_layering.py)."""
