"""The bottom layer every other package may use: logging, the user-facing error types, typed configs,
where the default assets live, and which command line is running. It imports nothing of the project."""
