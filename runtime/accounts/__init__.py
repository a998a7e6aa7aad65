"""People who use the dashboard and the admin API: users with a role and the assistants they may see
(``roles``), their passwords (``passwords``, argon2), their personal API tokens (``tokens``), and the stored
rows (``models``). Sessions of the dashboard stay in ``api.sessions``, keyed to a user."""
