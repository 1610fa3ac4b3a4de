"""Small datasets the project generates itself (tests and CPU demos; no downloads)."""
