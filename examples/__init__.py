"""Example tasks: how to add an experiment to the suite (docs/adding_a_task.md)."""
