"""The autocomplete pipeline: FIM / comment-to-code rows, the domain corpus, HumanEval tasks, metrics, recipe."""
