"""The evaluation harnesses behind ``atende eval``: retrieval, answers and approved-answer matching."""
