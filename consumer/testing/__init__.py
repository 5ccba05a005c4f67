"""Test doubles that ship with modstream (used by the tests, the demo and the benchmarks).

``fake_openai`` is an OpenAI-compatible fake server over real HTTP; it is not a model.
"""
