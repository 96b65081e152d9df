"""Techniques as recipes: quantization, PEFT methods, pretraining architecture variants, quality."""
