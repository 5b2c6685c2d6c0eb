"""The DeepSeekMath evaluation harness: benchmarks, prompts, answer checking, sandboxed code, runners."""
