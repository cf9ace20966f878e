"""Wire formats: each module translates one provider's HTTP shapes to and from the neutral
:class:`~distillery.emulator.completion.ChatRequest` / ``Answer``."""
