"""Fakes of the outside world, for tests: the image search APIs (`search_api`) and the like.

Only edges are faked here (HTTP services, third-party clients), never our own code.
"""
