"""Content inspection: facts about a message, parsed once, bounded. It decides nothing."""
