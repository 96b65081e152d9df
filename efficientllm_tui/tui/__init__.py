"""The Textual app: the only part of efficientllm that imports textual."""
